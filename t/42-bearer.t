# Bearer tokens (SPEC §12, issue 16) through nginx's own map, as the
# README documents it: `Authorization: Bearer <token>` (the scheme is
# case-insensitive, RFC 6750) yields the token; anything else yields
# nothing, which the check refuses (401, REJECTED) without any I/O. A
# second map accepts either the header or the cookie.

use v5.36;
use Test::More;
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

$pg->add_session('tok-bearer', 'u-bearer', 3600);
$pg->add_session('tok-cookie', 'u-cookie', 3600);

my $nginx = start_nginx(workers => 1, http => <<~"NGX");
    session_cache_redis ${\ $redis->url } pool=2 timeout=2s;
    session_cache_postgres "${\ $pg->dsn }" pool=2 timeout=2s;

    map \$http_authorization \$bearer {
        default                        "";
        "~*^Bearer\\s+(?<t>\\S+)\$"    \$t;
    }
    map \$bearer \$session_token {
        ""       \$cookie_session;
        default  \$bearer;
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        root %%HTML%%;
        add_header X-Status \$session_cache_status always;
        add_header X-User \$session_user_id always;
        location /api/    { auth_session \$bearer; }
        location /either/ { auth_session \$session_token; }
    }
    NGX
$nginx->write_html("$_/ok.html", "ok\n") for qw(api either);

sub try ($path, $want, $user, $what, %o) {
    my $r = get($path, %o);
    is($r->{status}, $want, "$path, $what: $want");
    is($r->{headers}{'x-user'}, $user, "$path, $what: user " . ($user // 'none'))
        if defined $user;
    return $r;
}

my $gets = $redis->calls('get');

for my $h ('Bearer tok-bearer', 'bearer tok-bearer', 'BEARER   tok-bearer',
           "Bearer\ttok-bearer") {
    try('/api/ok.html', 200, 'u-bearer', "Authorization: $h",
        headers => {Authorization => $h});
}

my $asked = $redis->calls('get');
cmp_ok($asked, '>', $gets, 'good headers are looked up');

for my $case (
    ['no Authorization header',      undef],
    ['Basic credentials',            'Basic dXNlcjpwYXNz'],
    ['the scheme alone',             'Bearer'],
    ['the scheme and spaces',        'Bearer    '],
    ['two words after the scheme',   'Bearer tok-bearer extra'],
    ['no space after the scheme',    'Bearertok-bearer'],
    ['another scheme ending Bearer', 'XBearer tok-bearer'],
    ['a token with a ;',             'Bearer tok;bearer'],
) {
    my ($what, $h) = @$case;
    my $r = try('/api/ok.html', 401, undef, $what,
                headers => defined $h ? {Authorization => $h} : {});
    is($r->{headers}{'x-status'}, 'REJECTED', "$what: REJECTED, no lookup");
}
is($redis->calls('get'), $asked, 'malformed headers cost no Redis call');

try('/api/ok.html', 401, undef, 'an unknown bearer token',
    headers => {Authorization => 'Bearer tok-never-issued'});
try('/api/ok.html', 401, undef, 'a quoted token (the quotes are part of it)',
    headers => {Authorization => 'Bearer "tok-bearer"'});
try('/api/ok.html', 401, undef, 'a cookie where a Bearer header is needed',
    cookie => 'session=tok-cookie');

# the cookie or the header
try('/either/ok.html', 200, 'u-cookie', 'the cookie alone',
    cookie => 'session=tok-cookie');
try('/either/ok.html', 200, 'u-bearer', 'the header alone',
    headers => {Authorization => 'Bearer tok-bearer'});
try('/either/ok.html', 200, 'u-bearer', 'both: the header wins',
    cookie => 'session=tok-cookie',
    headers => {Authorization => 'Bearer tok-bearer'});
try('/either/ok.html', 401, undef, 'both, the header unknown: the header decides',
    cookie => 'session=tok-cookie',
    headers => {Authorization => 'Bearer tok-never-issued'});
try('/either/ok.html', 200, 'u-cookie', 'a malformed header: the cookie',
    cookie => 'session=tok-cookie',
    headers => {Authorization => 'Basic dXNlcjpwYXNz'});
try('/either/ok.html', 401, undef, 'neither');

no_alerts($nginx);

done_testing;
