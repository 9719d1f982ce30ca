# Session attributes (SPEC §12, issue 16): columns of the session query
# after the second, named by their column names, cached with the session
# in Redis and exposed as $session_attr_<name>; end to end from Postgres
# through Redis to a header the upstream receives. Hostile values (CR, LF,
# NUL, DEL, 1 MB) from Redis or Postgres never reach a variable, so no
# header is ever split; bad attribute column names are a configuration
# error that the check answers as if Postgres had failed.

use v5.36;
use Test::More;
use JSON::PP ();
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

sub attrs ($token, $role, $tenant) {
    my $q = sub ($v) { defined $v ? $pg->quote($v) : 'NULL' };
    $pg->psql('INSERT INTO platform.session_attrs VALUES ('
              . join(', ', map { $q->($_) } $token, $role, $tenant) . ')');
}

my $QUERY = 'SELECT s.user_id, extract(epoch FROM s.expires_at)::bigint,'
          . ' a.role, a.tenant_id'
          . ' FROM platform.user_sessions s'
          . ' LEFT JOIN platform.session_attrs a USING (token)'
          . ' WHERE s.token = $1 AND s.revoked_at IS NULL'
          . ' AND s.expires_at > now()';

# /app/ is protected and proxies to /echo/ in the same server, which
# answers with the headers it received: the recording upstream. The
# client also gets the attribute through add_header.
sub site ($query) {
    return <<~"NGX";
        session_cache_redis ${\ $redis->url } pool=2 timeout=2s;
        session_cache_postgres "${\ $pg->dsn }" pool=2 timeout=2s;
        session_cache_query "$query";
        server {
            listen 127.0.0.1:%%PORT%%;
            location /app/ {
                auth_session \$cookie_session;
                proxy_set_header X-User-Role \$session_attr_role;
                proxy_set_header X-Tenant \$session_attr_tenant_id;
                proxy_set_header X-User-Id \$session_user_id;
                proxy_pass http://127.0.0.1:%%PORT%%/echo/;
                add_header X-Role \$session_attr_role always;
                add_header X-Status \$session_cache_status always;
            }
            location /echo/ {
                return 200 "user=[\$http_x_user_id] role=[\$http_x_user_role] tenant=[\$http_x_tenant] none=[\$session_attr_nope]\\n";
            }
            location = /health { session_cache_health timeout=5s; }
        }
        NGX
}

my $nginx = start_nginx(workers => 1, http => site($QUERY));
my $json = JSON::PP->new;

sub app ($token) { get('/app/', cookie => "session=$token") }

# SET through redis-cli -x: the value from a file, of any size or bytes
sub redis_set ($key, $value) {
    my $file = $redis->dir . '/value';
    open my $fh, '>:raw', $file or die "$file: $!";
    print {$fh} $value;
    close $fh;
    system("$redis->{cli_bin} -h 127.0.0.1 -p ${\ $redis->port } -x SET "
           . "'$key' < '$file' > /dev/null") == 0 or die "SET $key failed";
}

# no header split: the raw head holds exactly the headers we expect
sub no_split ($r, $what) {
    unlike($r->{raw}, qr/X-Evil/i, "$what: no injected header");
    my ($head) = split /\r\n\r\n/, $r->{raw}, 2;
    for my $line (split /\r\n/, $head // '') {
        unlike($line, qr/[\x00-\x08\x0a-\x1f\x7f]/, "$what: a clean header line");
    }
}

# --- Postgres -> Redis -> variable -> upstream --------------------------

$pg->add_session('tok-admin', 'u-alice', 3600);
attrs('tok-admin', 'admin', '42');

my $r = app('tok-admin');
is($r->{status}, 200, 'a session with attributes: 200');
is($r->{headers}{'x-status'}, 'MISS', 'first answer from postgres');
is($r->{body}, "user=[u-alice] role=[admin] tenant=[42] none=[]\n",
   'the upstream receives the attributes; an unknown one is empty');
is($r->{headers}{'x-role'}, 'admin', 'add_header shows the attribute');

ok($redis->wait_for_key('session:tok-admin'), 'the session is cached');
my $cached = $json->decode($redis->get_key('session:tok-admin'));
is_deeply($cached->{attrs}, {role => 'admin', tenant_id => '42'},
          'the cached value holds the attributes');
is($cached->{user_id}, 'u-alice', 'and the user id');

$r = app('tok-admin');
is($r->{headers}{'x-status'}, 'HIT', 'second answer from redis');
is($r->{body}, "user=[u-alice] role=[admin] tenant=[42] none=[]\n",
   'from redis: the same attributes reach the upstream');

# --- SQL NULL, no attribute row -----------------------------------------

$pg->add_session('tok-null', 'u-null', 3600);
attrs('tok-null', undef, '7');
$pg->add_session('tok-none', 'u-none', 3600);

for my $pass (qw(MISS HIT)) {
    $r = app('tok-null');
    is($r->{headers}{'x-status'}, $pass, "NULL role: $pass");
    is($r->{body}, "user=[u-null] role=[] tenant=[7] none=[]\n",
       "NULL role ($pass): empty, the other attribute still there");
    ok(!exists $r->{headers}{'x-role'}, "NULL role ($pass): no X-Role header");
    $redis->wait_for_key('session:tok-null');

    $r = app('tok-none');
    is($r->{headers}{'x-status'}, $pass, "no attribute row: $pass");
    is($r->{body}, "user=[u-none] role=[] tenant=[] none=[]\n",
       "no attribute row ($pass): every attribute empty");
    $redis->wait_for_key('session:tok-none');
}
$cached = $json->decode($redis->get_key('session:tok-null'));
is_deeply($cached->{attrs}, {tenant_id => '7'}, 'a NULL is not cached');
$cached = $json->decode($redis->get_key('session:tok-none'));
ok(!exists $cached->{attrs}, 'no attributes: no "attrs" in the cached value');

# --- an old cached value, without attrs ---------------------------------

my $exp = time + 3600;
$redis->cli('SET', 'session:tok-old', qq({"user_id":"u-old","expires_at":$exp}));
$r = app('tok-old');
is($r->{status}, 200, 'a cached value without attrs is valid');
is($r->{headers}{'x-status'}, 'HIT', 'and is a hit');
is($r->{body}, "user=[u-old] role=[] tenant=[] none=[]\n",
   'with no attributes');

# --- hostile values from Redis: unreadable, Postgres asked --------------

# a token per case: the Postgres answer of one case is written back to
# Redis after its response (asynchronously), so with one token it could
# land after the next case's hostile value and answer that case as a HIT
my @hostile_tokens = map { "tok-hostile-$_" } 1 .. 11;
for my $t (@hostile_tokens) {
    $pg->add_session($t, 'u-host', 3600);
    attrs($t, 'user', '9');
}

my $big = 'x' x (1 << 20);
my %hostile = (
    'CR LF'              => qq({"role":"a\\r\\nX-Evil: 1"}),
    'LF'                 => qq({"role":"a\\nX-Evil: 1"}),
    'NUL'                => qq({"role":"a\\u0000X-Evil: 1"}),
    'DEL'                => qq({"role":"a\\u007f"}),
    'a raw CR LF'        => qq({"role":"a\r\nX-Evil: 1"}),
    '257 bytes'          => '{"role":"' . ('x' x 257) . '"}',
    '1 MB'               => qq({"role":"$big"}),   # past the GET reply bound
    '60 KB'              => '{"role":"' . ('x' x 60_000) . '"}',  # within it
    'an upper-case name' => '{"Role":"admin"}',
    '17 attributes'      => '{' . join(',', map { qq("a$_":"v") } 1 .. 17) . '}',
    'a number'           => '{"role":42}',
);
my $warned = $nginx->log_count(qr/unreadable cached session value/);
die 'a token per case' unless @hostile_tokens == keys %hostile;
for my $case (sort keys %hostile) {
    my $t = shift @hostile_tokens;
    redis_set("session:$t",
              qq({"user_id":"u-host","expires_at":$exp,"attrs":$hostile{$case}}));
    $r = app($t);
    is($r->{status}, 200, "redis holds $case: the session is still valid")
        or diag $r->{raw};
    like($r->{headers}{'x-status'} // '', qr/^(MISS|BYPASS)$/,
         "redis holds $case: postgres answered");
    is($r->{body}, "user=[u-host] role=[user] tenant=[9] none=[]\n",
       "redis holds $case: the upstream gets postgres's attributes");
    no_split($r, "redis holds $case");
}
cmp_ok($nginx->log_count(qr/unreadable cached session value/), '>', $warned,
       'an unreadable value is logged');

# --- hostile values from Postgres: 401, the column named ----------------

my %from_pg = (
    'CR LF' => "E'admin\\r\\nX-Evil: 1'",
    'LF'    => "E'admin\\nX-Evil: 1'",
    'DEL'   => "E'admin\\x7f'",
    '257 bytes' => "repeat('x', 257)",
    '1 MB'  => "repeat('x', 1048576)",
);
my $n = 0;
for my $case (sort keys %from_pg) {
    my $tok = 'tok-pg-hostile-' . $n++;
    $pg->add_session($tok, 'u-evil', 3600);
    $pg->psql("INSERT INTO platform.session_attrs VALUES "
              . "('$tok', $from_pg{$case}, '1')");
    my $since = $nginx->log_size;
    $r = app($tok);
    is($r->{status}, 401, "postgres returns a role with $case: 401");
    no_split($r, "postgres returns $case");
    ok($nginx->wait_for_log(qr/\[error\].*attribute column "role" that is too long or holds control characters/,
                            1, $since),
       "postgres returns $case: the error log names the column");
    unlike($nginx->log_since($since), qr/\Q$tok\E/,
           "postgres returns $case: the error log never holds the token");
    is($redis->key_exists("session:$tok"), 0,
       "postgres returns $case: nothing cached");
}

# --- the health document: unchanged -------------------------------------

my ($hr, $doc) = $nginx->health;
is($doc->{status}, 'healthy', 'health: healthy with attribute columns');
is_deeply($doc->{errors}, [], 'health: no errors');

no_alerts($nginx);

# --- through L1: Postgres -> L1 -> variable, and Redis -> L1 -> variable --

{
    my $site = site($QUERY);
    $site =~ s/^(session_cache_query .*\n)/$1session_cache_l1 size=1m tracking=on;\n/m
        or die 'no session_cache_query line';
    $site =~ s/(add_header X-Status )/add_header X-Layer \$session_cache_layer always;\n                $1/
        or die 'no X-Status line';
    my $l1 = start_nginx(workers => 1, http => $site);
    ok(wait_until(sub { ($l1->health)[1]{l1}{armed} }),
       'L1: the listener is armed');

    $pg->add_session('tok-l1', 'u-l1', 3600);
    attrs('tok-l1', 'editor', '7');
    my $want = "user=[u-l1] role=[editor] tenant=[7] none=[]\n";

    my $a = $l1->get('/app/', cookie => 'session=tok-l1');
    is("$a->{status} $a->{headers}{'x-layer'}", '200 postgres',
       'L1: the first answer is Postgres\'s');
    # the module's own SET of the fill is broadcast back and drops the
    # entry (SPEC §8): a later answer, from Redis, fills L1 again
    my $b;
    ok(wait_until(sub {
           $b = $l1->get('/app/', cookie => 'session=tok-l1');
           ($b->{headers}{'x-layer'} // '') eq 'l1' }),
       'L1: a later answer is L1\'s');
    is("$b->{status} $b->{headers}{'x-status'}", '200 HIT', 'L1: 200 HIT');
    is($b->{body}, $want, 'from L1: the attributes reach the upstream');
    is($b->{headers}{'x-role'}, 'editor', 'from L1: add_header too');

    # a session cached in Redis before (tok-admin): Redis fills L1
    my $c = $l1->get('/app/', cookie => 'session=tok-admin');
    is($c->{headers}{'x-layer'}, 'redis', 'L1: a session cached in Redis');
    my $d;
    ok(wait_until(sub {
           $d = $l1->get('/app/', cookie => 'session=tok-admin');
           ($d->{headers}{'x-layer'} // '') eq 'l1' }),
       'L1: filled from Redis, then answers');
    is($d->{body}, "user=[u-alice] role=[admin] tenant=[42] none=[]\n",
       'from L1 filled by Redis: the attributes reach the upstream');

    no_alerts($l1, 'L1: no alerts');
}

# --- attribute columns refused: as if Postgres had failed ---------------

$pg->add_session('tok-fresh', 'u-fresh', 3600);
my %refused = (
    'a quoted upper-case name' => [
        'SELECT user_id, 0::bigint, user_id AS \\"Role\\" FROM platform.user_sessions WHERE token = $1',
        qr/the name of its column 3 "Role" is not a plain lower-case identifier/],
    'a name with a space' => [
        'SELECT user_id, 0::bigint, user_id AS \\"a b\\" FROM platform.user_sessions WHERE token = $1',
        qr/the name of its column 3 "a b" is not a plain lower-case identifier/],
    'user_id as an attribute' => [
        'SELECT user_id, 0::bigint, user_id FROM platform.user_sessions WHERE token = $1',
        qr/the name of its column 3 "user_id" is not/],
    'a name twice' => [
        'SELECT user_id, 0::bigint, user_id AS a, user_id AS a FROM platform.user_sessions WHERE token = $1',
        qr/its columns 3 and 4 have the same name/],
    '17 attributes' => [
        'SELECT user_id, 0::bigint, '
        . join(', ', map { "user_id AS a$_" } 1 .. 17)
        . ' FROM platform.user_sessions WHERE token = $1',
        qr/the session query has 17 attribute columns, at most 16/],
);
for my $case (sort keys %refused) {
    my ($sql, $why) = @{ $refused{$case} };
    my $bad = start_nginx(workers => 1, http => site($sql));
    $r = $bad->get('/app/', cookie => 'session=tok-fresh');
    is($r->{status}, 503, "$case: the check answers as if postgres failed");
    ok($bad->wait_for_log(qr/\[error\].*session_cache_query: .*$why/),
       "$case: the error log says why");
    my (undef, $d) = $bad->health;
    ok((grep { /$why/ } @{ $d->{errors} // [] }),
       "$case: the health document says why") or diag explain $d->{errors};
    no_alerts($bad, "$case: no alerts");
}

done_testing;
