# session_cache_query (issue 10 item 6): nginx -t reads the placeholders
# as Postgres does, and takes $1 and no other; a query that passes nginx -t
# but that Postgres refuses to prepare is a configuration error: an alert
# once per connection, 500 for every request that needs Postgres (also
# with auth_session_fail open), an unhealthy health document that says why,
# a breaker that stays closed; fixing the schema heals it without a reload.

use v5.36;
use Test::More;
use JSON::PP ();
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();
my $PG_DSN = $pg->dsn;
my $REDIS_URL = $redis->url;

# --- nginx -t ---------------------------------------------------------

# The query goes into a double-quoted nginx string: " is written \".
sub check_query ($sql) {
    return check_config(http => protected_site(
        postgres => qq{"$PG_DSN" pool=1},
        http     => qq{session_cache_query "$sql";}));
}

my $SEL = 'SELECT user_id FROM platform.user_sessions';

for my $case (
    ['$1 twice', "$SEL WHERE token = \$1 OR user_id = \$1"],
    ['$2 inside a string beside $1', "$SEL WHERE user_id <> '\$2' AND token = \$1"],
    ['a name holding $ (a$2)', "SELECT user_id AS a\$2 FROM platform.user_sessions WHERE token = \$1"],
    ['$2 in comments and dollar quotes',
     "$SEL /* \$2 /* nested */ \$3 */ WHERE token = \$1 -- or \$2\n"
     . " AND \$q\$ \$4 \$q\$ IS NOT NULL"],
) {
    my ($name, $sql) = @$case;
    my ($rc, $out) = check_query($sql);
    is($rc, 0, "nginx -t accepts a query with $name") or diag $out;
}

for my $case (
    ['$10', "$SEL WHERE token = \$10", qr/placeholder "\$10"/],
    ['$2 OR $1', "$SEL WHERE token = \$2 OR token = \$1", qr/placeholder "\$2"/],
    ['$1 OR $2', "$SEL WHERE token = \$1 OR token = \$2", qr/placeholder "\$2"/],
    ['$1 only inside a string', "$SEL WHERE token = '\$1'", qr/no \$1 for the token/],
    ['$1 only inside a quoted name', "$SEL WHERE token = \\\"\$1\\\"", qr/no \$1 for the token/],
    ['$1 only in a -- comment', "$SEL -- WHERE token = \$1", qr/no \$1 for the token/],
    ['$1 only in a /* */ comment', "$SEL /* WHERE token = \$1 */", qr/no \$1 for the token/],
    ['$1 only in a dollar quote', "$SEL WHERE token = \$\$\$1\$\$", qr/no \$1 for the token/],
    ['$1 only in an E string', "$SEL WHERE token = E'\\\\'\$1'", qr/no \$1 for the token/],
    ['no placeholder at all', $SEL, qr/no \$1 for the token/],
    ['$1 run into a name', "$SEL WHERE token = \$1abc", qr/"\$1abc": a placeholder runs into a name/],
    ['an unterminated string', "$SEL WHERE token = \$1 AND user_id = 'x", qr/unterminated quoted string/],
) {
    my ($name, $sql, $problem) = @$case;
    my ($rc, $out) = check_query($sql);
    isnt($rc, 0, "nginx -t rejects a query with $name");
    like($out, qr/\[emerg\].*session_cache_query: /,
         "the message for $name names the directive") or diag $out;
    like($out, $problem, "the message for $name names the problem")
        or diag $out;
}

# --- run time: a query Postgres refuses to prepare ---------------------

my $nginx = start_nginx(http => protected_site(
    redis    => "$REDIS_URL pool=2 timeout=1s",
    postgres => qq{"$PG_DSN" pool=2 timeout=2s},
    http     => qq{session_cache_query "SELECT user_id, nope FROM }
              . qq{platform.user_sessions WHERE token = \$1";\n}
              . qq{session_cache_breaker errors=50% min_requests=2;\n},
    protect  => 'auth_session_fail open;',
    server   => "location = /health { session_cache_health timeout=5s; }\n"));

$pg->add_session('tok-q-valid', 'user-q', 3600);

my $json = JSON::PP->new;
sub doc () {
    my $r = get('/health');
    return ($r, eval { $json->decode($r->{body}) } // {});
}

# More requests than the breaker's min_requests: the old code failed the
# connection, counted a breaker failure and, with auth_session_fail open,
# let every one of them through.
for my $i (1 .. 8) {
    my $tok = $i % 2 ? 'tok-q-valid' : "tok-q-never-issued-$i";
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 500, "request $i ($tok): 500 even with auth_session_fail open");
    is($r->{headers}{'x-session-status'}, 'ERROR', "request $i: status ERROR");
}

my $ALERT = qr/\[alert\].*postgres refused to prepare the session query \(session_cache_query\), a configuration error: column "nope" does not exist; /;
ok(wait_until(sub { $nginx->error_log =~ $ALERT }),
   'the error log has the alert, with the reason in Postgres\'s words');
my $alerts = () = $nginx->error_log =~ /$ALERT/g;
cmp_ok($alerts, '<=', 4,
       "the alert is logged once per connection ($alerts for 8 requests, "
       . '2 workers of pool=2)');

my ($r, $d) = doc();
is($r->{status}, 503, 'health: 503');
is($d->{status}, 'unhealthy', 'health: unhealthy, though both backends answer');
ok((grep { /^postgres: the session query cannot be prepared: .*column "nope" does not exist/ }
    @{ $d->{errors} // [] }), 'health: the errors say why')
    or diag explain $d->{errors};
ok($d->{postgres}{connected}, 'health: postgres itself answers');
is($d->{postgres}{breaker}, 'closed',
   'the breaker did not count a configuration error as an outage');

# --- the schema fixed: the connections prepare the query again ----------

$pg->psql('ALTER TABLE platform.user_sessions ADD COLUMN nope bigint');

$r = get('/', cookie => 'session=tok-q-valid');
is($r->{status}, 200, 'schema fixed: the valid session is let through at once');
is($r->{headers}{'x-session-user'}, 'user-q', 'schema fixed: the user id');
is(get('/', cookie => 'session=tok-q-unknown')->{status}, 401,
   'schema fixed: an unknown token is refused');
ok(wait_until(sub { (doc())[1]{status} eq 'healthy' }, 10, 0.1),
   'schema fixed: health is healthy again, without a reload');

SessionCache::Test::only_alerts($nginx, $ALERT,
    'the only alerts are the configuration error\'s, no sanitizer reports');

done_testing;
