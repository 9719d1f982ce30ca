# nginx -t: good configurations pass; bad ones fail with a message that
# names the directive, and never print a password.

use v5.36;
use Test::More;
use File::Temp qw(tempdir);
use SessionCache::Test;

my $REDIS_PW = 'Sup3rSecret';
my $PG_PW    = 'pg-S3cret-pw';
my $REDIS    = "redis://u:$REDIS_PW\@127.0.0.1:1/0";
my $PG       = qq{"host=127.0.0.1 port=1 dbname=sessions user=nginx password=$PG_PW"};

my $dir = tempdir('sc-config-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{TEST_KEEP});
chmod 0755, $dir;

sub write_secret ($name, $content) {
    my $path = "$dir/$name";
    open my $fh, '>', $path or die "$path: $!";
    print {$fh} $content;
    close $fh;
    chmod 0600, $path;
    return $path;
}

my $redis_file = write_secret('redis.url', "$REDIS\n");
my $pg_file    = write_secret('pg.dsn',
    "host=127.0.0.1 port=1 dbname=sessions user=nginx password=$PG_PW\n");
my $bad_file   = write_secret('bad.url', "http://u:$REDIS_PW\@x\n");

# A site with the given backend directives (raw text) and a protected
# location.
sub site (%o) {
    return protected_site(
        redis    => $o{redis},
        postgres => $o{postgres},
        http     => $o{http},
        server   => $o{server},
    );
}

sub config_ok ($name, %o) {
    my ($rc, $out) = check_config(http => site(%o), env => $o{env});
    is($rc, 0, "nginx -t accepts $name") or diag $out;
    unlike($out, qr/\Q$REDIS_PW\E|\Q$PG_PW\E/,
           "nginx -t output for $name holds no password");
}

sub config_fails ($name, $directive, %o) {
    my ($rc, $out) = check_config(http => site(%o), env => $o{env},
                                  main => $o{main});
    isnt($rc, 0, "nginx -t rejects $name");
    like($out, qr/\Q$directive\E/, "the message for $name names $directive")
        or diag $out if defined $directive;
    like($out, $o{problem}, "the message for $name names the problem")
        or diag $out if $o{problem};
    unlike($out, qr/\Q$REDIS_PW\E|\Q$PG_PW\E/,
           "the message for $name holds no password") or diag $out;
}

my $pg_ok = "$PG pool=2 connect_timeout=300ms timeout=200ms";
my $redis_ok = "$REDIS pool=2 connect_timeout=300ms timeout=200ms";

# --- accepted --------------------------------------------------------

config_ok('a literal URL and conninfo', redis => $redis_ok, postgres => $pg_ok);
config_ok('a postgresql:// URI',
    redis    => $redis_ok,
    postgres => "postgresql://nginx:$PG_PW\@127.0.0.1:1/sessions pool=1");
config_ok('env= sources',
    redis => 'env=SC_TEST_REDIS_URL pool=2', postgres => 'env=SC_TEST_PG_DSN',
    env => { SC_TEST_REDIS_URL => $REDIS,
             SC_TEST_PG_DSN => "host=127.0.0.1 password=$PG_PW" });
config_ok('file= sources (trailing newline)',
    redis => "file=$redis_file timeout=1s", postgres => "file=$pg_file");
config_ok('Postgres alone', postgres => $pg_ok);
config_ok('all the http-level settings',
    redis => $redis_ok, postgres => $pg_ok, http => <<~'NGX');
        session_cache_ttl 5m;
        session_cache_negative_ttl 0;
        session_cache_key_prefix "sc:";
        session_cache_query "SELECT user_id, extract(epoch FROM expires_at)::bigint FROM platform.user_sessions WHERE token = $1";
        auth_session_fail open;
        NGX

# --- rejected: bad parameters ---------------------------------------

config_fails('a bad time unit (timeout=abc)', 'session_cache_redis',
    redis => "$REDIS timeout=abc", postgres => $pg_ok);
config_fails('a bad time unit on Postgres (connect_timeout=abc)',
    'session_cache_postgres',
    redis => $redis_ok, postgres => "$PG connect_timeout=abc");
config_fails('an unknown parameter (foo=1)', 'session_cache_redis',
    redis => "$REDIS foo=1", postgres => $pg_ok);
config_fails('an unknown parameter on Postgres (foo=1)',
    'session_cache_postgres',
    redis => $redis_ok, postgres => "$PG foo=1");
config_fails('pool=0', 'session_cache_redis',
    redis => "$REDIS pool=0", postgres => $pg_ok);
config_fails('pool=0 on Postgres', 'session_cache_postgres',
    redis => $redis_ok, postgres => "$PG pool=0");

# --- rejected: bad addresses ------------------------------------------

config_fails('an http:// URL', 'session_cache_redis',
    redis => "http://u:$REDIS_PW\@x", postgres => $pg_ok);
config_fails('a port out of range', 'session_cache_redis',
    redis => "redis://u:$REDIS_PW\@host:99999", postgres => $pg_ok,
    problem => qr/port/i);
config_fails('a conninfo libpq cannot parse', 'session_cache_postgres',
    redis => $redis_ok,
    postgres => qq{"host=127.0.0.1 password=$PG_PW bogus_option=1"});
config_fails('a bad URL read from a file', 'session_cache_redis',
    redis => "file=$bad_file", postgres => $pg_ok);
config_fails('a bad URL read from the environment', 'session_cache_redis',
    redis => 'env=SC_TEST_REDIS_URL', postgres => $pg_ok,
    env => { SC_TEST_REDIS_URL => "redis://u:$REDIS_PW\@host:99999/0" });

# --- a malformed URI puts pieces of a password where the host or port
# --- is read (issue 10 item 4): the message names the field, not its value

for my $case (
    # (name, directive, address, secret pieces, problem)
    ['a "/" in a Postgres URI password', 'session_cache_postgres',
     'postgresql://nginx:PgSecret/9x2Wz@127.0.0.1:5432/sessions',
     [qw(PgSecret 9x2Wz)], qr/"@" outside the URI's user:password part/],
    ['an "@" in a Postgres URI password', 'session_cache_postgres',
     'postgresql://nginx:PgSecret@9x2Wz@127.0.0.1/sessions',
     [qw(PgSecret 9x2Wz)], qr/"@" outside the URI's user:password part/],
    ['a Postgres URI with the host forgotten', 'session_cache_postgres',
     'postgresql://nginx:PgSecret/sessions',
     [qw(PgSecret)], qr/invalid port in the URI/],
    ['a Postgres URI with a digits-only password and no host',
     'session_cache_postgres', 'postgresql://nginx:937162/sessions',
     [qw(937162)], qr/invalid port in the URI/],
    ['a Postgres URI whose host does not resolve', 'session_cache_postgres',
     'postgresql://nginx:PgSecret@no-such-host.invalid/sessions',
     [qw(PgSecret no-such-host)], qr/could not translate host name/],
    ['a Postgres URI read as host:port', 'session_cache_postgres',
     'postgresql://PgSecret.invalid:5432/sessions',
     [qw(PgSecret)], qr/could not translate host name/],
    ['a Redis URL with the host forgotten', 'session_cache_redis',
     'redis://default:937162', [qw(937162)], qr/invalid port/],
    ['a Redis URL with the host forgotten (db)', 'session_cache_redis',
     'redis://default:937162/0', [qw(937162)], qr/invalid port/],
    ['a Redis URL with a password and a port out of range',
     'session_cache_redis', 'redis://u:Rd5ecret@127.0.0.1:70000/0',
     [qw(Rd5ecret 70000)], qr/invalid port/],
    ['a Redis URL whose host does not resolve', 'session_cache_redis',
     'redis://default:Rd5ecret@no-such-host.invalid/0',
     [qw(Rd5ecret no-such-host)], qr/could not translate host name/],
) {
    my ($name, $directive, $address, $pieces, $problem) = @$case;
    my $pg = $directive eq 'session_cache_postgres';
    my ($rc, $out) = check_config(http => site(
        redis    => $pg ? $redis_ok : $address,
        postgres => $pg ? $address : $pg_ok));
    isnt($rc, 0, "nginx -t rejects $name");
    like($out, qr/\Q$directive\E: /, "the message for $name names $directive")
        or diag $out;
    like($out, $problem, "the message for $name names the problem")
        or diag $out;
    for my $piece (@$pieces) {
        unlike($out, qr/\Q$piece\E/,
               "the message for $name does not hold \"$piece\"") or diag $out;
    }
}

# Where no user, password or port part could be involved, the value helps
# and is shown.
config_fails('a conninfo host that does not resolve', 'session_cache_postgres',
    redis => $redis_ok,
    postgres => qq{"host=no-such-host.invalid password=$PG_PW"},
    problem => qr/could not translate host name "no-such-host\.invalid"/);
config_fails('a Redis host that does not resolve', 'session_cache_redis',
    redis => 'redis://no-such-host.invalid/0', postgres => $pg_ok,
    problem => qr/could not translate host name "no-such-host\.invalid"/);

# --- rejected: missing sources ----------------------------------------

config_fails('an unset env= variable', 'session_cache_redis',
    redis => 'env=SC_TEST_UNSET_VAR', postgres => $pg_ok,
    env => { SC_TEST_UNSET_VAR => undef }, problem => qr/SC_TEST_UNSET_VAR/);
config_fails('an unset env= variable for Postgres', 'session_cache_postgres',
    redis => $redis_ok, postgres => 'env=SC_TEST_UNSET_VAR',
    env => { SC_TEST_UNSET_VAR => undef }, problem => qr/SC_TEST_UNSET_VAR/);
config_fails('a missing file=', 'session_cache_redis',
    redis => "file=$dir/no-such-file", postgres => $pg_ok,
    problem => qr/no-such-file/);
config_fails('a missing file= for Postgres', 'session_cache_postgres',
    redis => $redis_ok, postgres => "file=$dir/no-such-file",
    problem => qr/no-such-file/);

# --- rejected: structure ----------------------------------------------

config_fails('a duplicate session_cache_redis', 'session_cache_redis',
    redis => $redis_ok, postgres => $pg_ok,
    http => "session_cache_redis $REDIS;", problem => qr/duplicate/);
config_fails('a duplicate session_cache_postgres', 'session_cache_postgres',
    redis => $redis_ok, postgres => $pg_ok,
    http => "session_cache_postgres $PG;", problem => qr/duplicate/);
config_fails('auth_session without any backend', 'session_cache_postgres');
config_fails('session_cache_redis inside a server', 'session_cache_redis',
    postgres => $pg_ok,
    http => "server { listen 127.0.0.1:1; session_cache_redis $REDIS; }");

# --- every directive's message names the directive (issue 10 item 7) -----

# (name, directive, where the lines go, the lines, the problem)
for my $case (
    ['a bad auth_session_fail', 'auth_session_fail', http =>
     'auth_session_fail maybe;',
     qr/auth_session_fail: invalid value "maybe" \(expected closed, open\)/],
    ['a duplicate auth_session_fail', 'auth_session_fail', http =>
     "auth_session_fail open;\nauth_session_fail closed;", qr/duplicate/],
    ['auth_session_fail without a value', 'auth_session_fail', server =>
     'location /x { auth_session_fail; }', qr/number of arguments/],
    ['a bad auth_session expression', 'auth_session', server =>
     'location /x { auth_session "$"; }',
     qr/auth_session: invalid token expression "\$"/],
    ['a duplicate auth_session', 'auth_session', server =>
     'location /x { auth_session $cookie_a; auth_session off; }',
     qr/duplicate/],
    ['auth_session with two values', 'auth_session', server =>
     'location /x { auth_session a b; }', qr/number of arguments/],
    ['a bad session_cache_ttl', 'session_cache_ttl', http =>
     'session_cache_ttl abc;', qr/invalid value/],
    ['session_cache_ttl 0', 'session_cache_ttl', http =>
     'session_cache_ttl 0;', qr/must be positive/],
    ['a duplicate session_cache_ttl', 'session_cache_ttl', http =>
     "session_cache_ttl 1m;\nsession_cache_ttl 2m;", qr/duplicate/],
    ['a bad session_cache_negative_ttl', 'session_cache_negative_ttl', http =>
     'session_cache_negative_ttl soon;', qr/invalid value/],
    ['a duplicate session_cache_negative_ttl', 'session_cache_negative_ttl',
     http => "session_cache_negative_ttl 1s;\nsession_cache_negative_ttl 2s;",
     qr/duplicate/],
    ['a session_cache_query without $1', 'session_cache_query', http =>
     'session_cache_query "SELECT user_id FROM s WHERE token = \'x\'";',
     qr/\$1/],
    ['a duplicate session_cache_query', 'session_cache_query', http =>
     "session_cache_query \"SELECT 1 WHERE \$1 = ''\";\n"
     . "session_cache_query \"SELECT 2 WHERE \$1 = ''\";", qr/duplicate/],
    ['a duplicate session_cache_key_prefix', 'session_cache_key_prefix',
     http => "session_cache_key_prefix a:;\nsession_cache_key_prefix b:;",
     qr/duplicate/],
    ['session_cache_key_prefix without a value', 'session_cache_key_prefix',
     http => 'session_cache_key_prefix;', qr/number of arguments/],
    ['an unknown session_cache_health parameter', 'session_cache_health',
     server => 'location /h { session_cache_health bogus=1; }',
     qr/unknown parameter "bogus=1"/],
    ['a bad session_cache_health threshold', 'session_cache_health',
     server => 'location /h { session_cache_health threshold=abc; }',
     qr/invalid threshold "abc"/],
    ['a bad session_cache_health timeout', 'session_cache_health',
     server => 'location /h { session_cache_health timeout=0; }',
     qr/invalid timeout "0"/],
    ['a duplicate session_cache_health', 'session_cache_health',
     server => 'location /h { session_cache_health; session_cache_health; }',
     qr/duplicate/],
    ['session_cache_postgres without a value', 'session_cache_postgres',
     http => 'session_cache_postgres;', qr/number of arguments/],
    ['session_cache_breaker in a server', 'session_cache_breaker',
     server => 'session_cache_breaker off;', qr/not allowed here/],
) {
    my ($name, $directive, $where, $lines, $problem) = @$case;
    config_fails($name, $directive, redis => $redis_ok, postgres => $pg_ok,
                 $where => $lines, problem => $problem);
}

# --- session_cache_breaker ----------------------------------------------

for my $b ('errors=50% window=10s buckets=10 cooldown=30s min_requests=5',
           'errors=25 cooldown=500ms', 'errors=0% window=1s buckets=100',
           'off') {
    config_ok("session_cache_breaker $b",
        redis => $redis_ok, postgres => $pg_ok,
        http => "session_cache_breaker $b;");
}
for my $case (
    ['errors=101%',    qr/invalid errors "errors=101%" \(expected 0%\.\.100%\)/],
    ['errors=half',    qr/invalid errors "errors=half"/],
    ['window=0',       qr/invalid window "0"/],
    ['cooldown=soon',  qr/invalid cooldown "soon"/],
    ['window=',        qr/invalid window ""/],
    ['buckets=0',      qr/invalid buckets "buckets=0" \(expected 1\.\.100\)/],
    ['buckets=101',    qr/invalid buckets "buckets=101"/],
    ['min_requests=0', qr/invalid min_requests "min_requests=0"/],
    ['windows=10s',    qr/unknown parameter "windows=10s"/],
    ['window=50ms buckets=100', qr/window of 50ms cannot hold 100 buckets/],
) {
    my ($args, $problem) = @$case;
    config_fails("session_cache_breaker $args", 'session_cache_breaker',
        redis => $redis_ok, postgres => $pg_ok,
        http => "session_cache_breaker $args;", problem => $problem);
}
config_fails('a duplicate session_cache_breaker', 'session_cache_breaker',
    redis => $redis_ok, postgres => $pg_ok,
    http => "session_cache_breaker off;\nsession_cache_breaker errors=10%;",
    problem => qr/duplicate/);

# --- and a good one really starts ----------------------------------------

my $nginx = start_nginx(http => site(redis => $redis_ok, postgres => $pg_ok));
is(get('/public.html')->{status}, 200,
   'nginx starts with the module loaded, backends unreachable');
unlike($nginx->error_log, qr/\Q$REDIS_PW\E|\Q$PG_PW\E/,
       'the error log holds no password');
no_alerts($nginx);

done_testing;
