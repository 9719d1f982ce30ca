# auth_session_require (SPEC §12, issue 16): every named attribute (or
# user_id) must equal one of its values, which may hold variables, else
# 403; checked after the session check, only where it let a session
# through (an invalid one stays 401); inherited, `off` cancels; error_page
# 403 works; nginx -t checks the form of the names, not whether the query
# has such a column (only Postgres knows that).

use v5.36;
use Test::More;
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

$pg->psql(<<~'SQL');
    CREATE TABLE platform.session_attrs (
      token     text PRIMARY KEY,
      role      text,
      tenant_id text
    );
    GRANT SELECT ON platform.session_attrs TO nginx;
    SQL

my $QUERY = 'SELECT s.user_id, extract(epoch FROM s.expires_at)::bigint,'
          . ' a.role, a.tenant_id'
          . ' FROM platform.user_sessions s'
          . ' LEFT JOIN platform.session_attrs a USING (token)'
          . ' WHERE s.token = $1 AND s.revoked_at IS NULL'
          . ' AND s.expires_at > now()';

my %who = (
    'tok-admin-42'  => ['u-alice', 'admin',  '42'],
    'tok-editor-42' => ['u-bob',   'editor', '42'],
    'tok-admin-7'   => ['u-carol', 'admin',  '7'],
    'tok-user-42'   => ['u-dave',  'user',   '42'],
    'tok-bare'      => ['u-erin',  undef,    undef],
);
for my $tok (sort keys %who) {
    my ($user, $role, $tenant) = @{ $who{$tok} };
    $pg->add_session($tok, $user, 3600);
    next unless defined $role;
    $pg->psql("INSERT INTO platform.session_attrs VALUES ('$tok', '$role', '$tenant')");
}

# the http-level rule applies wherever it is not replaced
my $nginx = start_nginx(workers => 1, http => <<~"NGX");
    session_cache_redis ${\ $redis->url } pool=2 timeout=2s;
    session_cache_postgres "${\ $pg->dsn }" pool=2 timeout=2s;
    session_cache_query "$QUERY";
    auth_session_require role=admin;
    map \$http_x_tenant_host \$tenant_from_host {
        default      "";
        t42.example  42;
        t7.example   7;
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        root %%HTML%%;
        auth_session \$cookie_session;
        add_header X-Status \$session_cache_status always;
        location /admin/ { }
        location /multi/ {
            auth_session_require role=admin,editor tenant_id=42;
        }
        location /var/ {
            auth_session_require tenant_id=\$tenant_from_host;
        }
        location /user/ {
            auth_session_require user_id=u-alice,u-\$http_x_who;
        }
        location /open/ {
            auth_session_require off;
        }
        location /err/ {
            auth_session_require role=root;
            error_page 403 = \@forbidden;
        }
        location \@forbidden {
            auth_session off;
            return 418 "forbidden page, user [\$session_user_id]\\n";
        }
        location /public/ {
            auth_session off;
        }
    }
    NGX
$nginx->write_html("$_/ok.html", "ok\n") for qw(admin multi var user open err public);

sub try ($path, $tok, $want, $what, %h) {
    my $r = get($path, cookie => (defined $tok ? "session=$tok" : undef),
                headers => \%h);
    is($r->{status}, $want, "$path with " . ($tok // 'no cookie') . ": $want, $what");
    return $r;
}

# one name, inherited from http
try('/admin/ok.html', 'tok-admin-42', 200, 'role admin is required and held');
try('/admin/ok.html', 'tok-user-42', 403, 'role user is not admin');
try('/admin/ok.html', 'tok-bare', 403, 'no role at all');
my $since = $nginx->log_size;
try('/admin/ok.html', 'tok-user-42', 403, 'again, from the cache');
ok($nginx->wait_for_log(qr/\[info\].*access forbidden by auth_session_require: role/, 1, $since),
   'the refusal is logged at info, naming the attribute');
unlike($nginx->log_since($since), qr/tok-user-42/, 'never the token');
try('/admin/ok.html', 'tok-never-issued', 401, 'an invalid session stays 401');
try('/admin/ok.html', undef, 401, 'no session stays 401');
try('/public/ok.html', undef, 200, 'no auth_session: the rule has nothing to check');

# several names: all must match, each one of its values
try('/multi/ok.html', 'tok-admin-42', 200, 'admin of tenant 42');
try('/multi/ok.html', 'tok-editor-42', 200, 'editor of tenant 42 (the second value)');
try('/multi/ok.html', 'tok-admin-7', 403, 'admin of another tenant');
try('/multi/ok.html', 'tok-user-42', 403, 'tenant 42 but not a listed role');
try('/multi/ok.html', 'tok-bare', 403, 'neither');

# values with variables
try('/var/ok.html', 'tok-admin-42', 200, 'tenant 42 on t42', 'X-Tenant-Host' => 't42.example');
try('/var/ok.html', 'tok-admin-7', 200, 'tenant 7 on t7', 'X-Tenant-Host' => 't7.example');
try('/var/ok.html', 'tok-admin-42', 403, 'tenant 42 on t7', 'X-Tenant-Host' => 't7.example');
try('/var/ok.html', 'tok-admin-42', 403, 'the variable empty: never a match', 'X-Tenant-Host' => 'other.example');
try('/var/ok.html', 'tok-bare', 403, 'both empty: never a match', 'X-Tenant-Host' => 'other.example');
try('/user/ok.html', 'tok-admin-42', 200, 'user_id u-alice');
try('/user/ok.html', 'tok-editor-42', 200, 'user_id u-bob from a variable', 'X-Who' => 'bob');
try('/user/ok.html', 'tok-editor-42', 403, 'user_id u-bob, the variable says carol', 'X-Who' => 'carol');

# off cancels the inherited rule
try('/open/ok.html', 'tok-user-42', 200, 'auth_session_require off');
try('/open/ok.html', 'tok-never-issued', 401, 'off: the session check still runs');

# error_page 403
my $r = try('/err/ok.html', 'tok-admin-42', 418, 'error_page 403 = @forbidden');
is($r->{body}, "forbidden page, user [u-alice]\n",
   'the error page sees the session');
try('/err/ok.html', 'tok-never-issued', 401, 'the error page is for 403 only');

no_alerts($nginx);

# --- auth_session_fail open: no session, so no rule is met --------------

my $open = start_nginx(workers => 1, http => <<~"NGX");
    session_cache_postgres "host=127.0.0.1 port=${\ SessionCache::Test::free_port() } dbname=x user=x connect_timeout=1" pool=1 timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        root %%HTML%%;
        auth_session \$cookie_session;
        auth_session_fail open;
        add_header X-Status \$session_cache_status always;
        location /admin/ { auth_session_require role=admin; }
        location /any/ { }
    }
    NGX
$open->write_html("$_/ok.html", "ok\n") for qw(admin any);
$r = $open->get('/any/ok.html', cookie => 'session=tok-admin-42');
is($r->{status}, 200, 'fail open, no rule: let through');
is($r->{headers}{'x-status'}, 'FAIL_OPEN', 'as FAIL_OPEN');
$r = $open->get('/admin/ok.html', cookie => 'session=tok-admin-42');
is($r->{status}, 403, 'fail open with a rule: 403, the role is not known');
no_alerts($open, 'fail open: no alerts');

# --- nginx -t -------------------------------------------------------------

sub check ($directive) {
    return check_config(http => protected_site(
        postgres => '"' . $pg->dsn . '" pool=1',
        protect  => $directive));
}

for my $ok ('auth_session_require role=admin;',
            'auth_session_require role=a,b,c tenant_id=$http_x_t user_id=u1;',
            'auth_session_require off;',
            'auth_session_require no_such_column=x;') {
    my ($rc, $out) = check($ok);
    is($rc, 0, "nginx -t accepts: $ok") or diag $out;
}
for my $case (
    ['auth_session_require role;', qr/"role" is not NAME=VALUE/],
    ['auth_session_require =admin;', qr/"" is not user_id or an attribute name/],
    ['auth_session_require Role=admin;', qr/"Role" is not user_id or an attribute name/],
    ['auth_session_require 1x=a;', qr/"1x" is not user_id or an attribute name/],
    ['auth_session_require role=;', qr/"role=" has an empty value/],
    ['auth_session_require role=a,,b;', qr/"role=a,,b" has an empty value/],
    ['auth_session_require role=a,;', qr/"role=a," has an empty value/],
    ['auth_session_require role=a role=b;', qr/"role" is named twice/],
    ['auth_session_require off role=a;', qr/"off" is not NAME=VALUE/],
    ['auth_session_require role=a; auth_session_require role=b;', qr/is duplicate/],
    ['auth_session_require role=$;', qr/invalid value|invalid variable name/],
) {
    my ($directive, $why) = @$case;
    my ($rc, $out) = check($directive);
    isnt($rc, 0, "nginx -t refuses: $directive");
    like($out, qr/\[emerg\].*auth_session_require.*$why|\[emerg\].*$why/,
         "the message for $directive says why") or diag $out;
}

done_testing;
