# The health location (SPEC §6): the JSON document's shape and types, the
# counters summed over both workers, status and HTTP code with the
# backends up or down, the latency threshold, the Prometheus text accepted
# by promtool, and no secret in either format.

use v5.36;
use Test::More;
use JSON::PP ();
use SessionCache::Test;

my $REDIS_PW = 'redis-S3cret-pw';
my $redis = start_redis(requirepass => $REDIS_PW);
my $pg    = start_postgres();

my $H = session_headers();
my $REDIS_URL = $redis->url;
my $PG_DSN = $pg->dsn;

# reuseport: the kernel spreads connections over both workers.
my $nginx = start_nginx(http => <<~"NGX");
    session_cache_redis $REDIS_URL pool=2 connect_timeout=300ms timeout=200ms;
    session_cache_postgres "$PG_DSN" pool=2 connect_timeout=300ms timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        add_header X-Worker \$pid always;
        location / {
            root %%HTML%%;
            auth_session \$cookie_session;
            add_header X-Worker \$pid always;
            $H
        }
        location = /public.html {
            root %%HTML%%;
        }
        location = /health {
            session_cache_health threshold=1s timeout=1s;
        }
        location = /health-strict {
            session_cache_health threshold=0ms;
        }
    }
    NGX

my $json = JSON::PP->new;

sub doc ($path = '/health') {
    my $r = get($path);
    my $d = eval { $json->decode($r->{body}) };
    return ($r, $d);
}

# The JSON type of a decoded value.
sub type_of ($v) {
    return 'null' unless defined $v;
    return 'boolean' if JSON::PP::is_bool($v);
    return 'object' if ref $v eq 'HASH';
    return 'array' if ref $v eq 'ARRAY';
    return JSON::PP->new->allow_nonref->encode($v) =~ /^"/ ? 'string' : 'number';
}

sub at ($d, $path) {
    my $v = $d;
    for my $k (split /\./, $path) {
        return (0, undef) unless ref $v eq 'HASH' && exists $v->{$k};
        $v = $v->{$k};
    }
    return (1, $v);
}

sub no_secrets ($body, $what) {
    for my $secret ($REDIS_PW, $pg->password, 'host=', 'dbname=', 'redis://',
                    'password') {
        # a conninfo's host=, not a Prometheus label's host="..."
        my $re = $secret eq 'host=' ? qr/host=(?!")/i : qr/\Q$secret\E/i;
        unlike($body, $re, "$what: no \"$secret\" in the answer");
    }
}

# --- the directive --------------------------------------------------------

for my $case (['threshold=abc', 'invalid threshold "abc"'],
              ['timeout=0', 'invalid timeout "0"'],
              ['interval=5s', 'unknown parameter "interval=5s"']) {
    my ($bad, $why) = @$case;
    my ($rc, $out) = check_config(http => <<~"NGX");
        server { listen 127.0.0.1:1; location = /h { session_cache_health $bad; } }
        NGX
    isnt($rc, 0, "session_cache_health $bad: nginx -t fails");
    like($out, qr/session_cache_health: \Q$why\E/,
         "session_cache_health $bad: the message names the directive and the problem");
}

# --- the document's shape (SPEC §6) -------------------------------------

$pg->add_session('tok-h-1', 'user-1', 3600);
is(get('/', cookie => 'session=tok-h-1')->{status}, 200, 'a session is checked first');

my ($r, $d) = doc();
is($r->{status}, 200, 'both up: 200');
is($r->{headers}{'content-type'}, 'application/json', 'application/json');
ok($d, 'the body is JSON') or diag $r->{body};

my %types = (
    'status' => 'string', 'timestamp' => 'string',
    'redis' => 'object', 'redis.connected' => 'boolean',
    'redis.version' => 'string', 'redis.uptime' => 'number',
    'redis.usedMemory' => 'string', 'redis.totalKeys' => 'number',
    'redis.breaker' => 'string',
    'postgres' => 'object', 'postgres.connected' => 'boolean',
    'postgres.version' => 'string', 'postgres.breaker' => 'string',
    'sessionCache' => 'object', 'sessionCache.enabled' => 'boolean',
    'sessionCache.healthy' => 'boolean', 'sessionCache.metrics' => 'object',
    (map { ("sessionCache.metrics.$_" => 'number') }
         qw(hits misses negatives bypasses rejected errors invalidations
            total hitRate ttl)),
    'sessionCache.metrics.enabled' => 'boolean',
    'sessionCache.pool' => 'object',
    (map { ("sessionCache.pool.$_" => 'number') } qw(size available pending)),
    'performance' => 'object',
    (map { ("performance.$_" => 'number') } qw(ping set get postgres)),
    'errors' => 'array',
);
for my $path (sort keys %types) {
    my ($exists, $v) = at($d, $path);
    ok($exists, "$path is present") or next;
    is(type_of($v), $types{$path}, "$path is a $types{$path}");
}

is($d->{status}, 'healthy', 'both up: healthy');
is_deeply($d->{errors}, [], 'both up: no errors');
like($d->{timestamp}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
     'the timestamp is ISO 8601 UTC with milliseconds');
like($d->{redis}{version}, qr/^\d+\.\d+/, 'the Redis version');
like($d->{postgres}{version}, qr/^\d+(\.\d+)?$/, 'the Postgres version, short');
ok($d->{redis}{connected} && $d->{postgres}{connected}, 'both connected');
is($d->{sessionCache}{metrics}{ttl}, 300, 'metrics.ttl is session_cache_ttl');
is($d->{redis}{breaker}, 'closed', 'the Redis breaker: closed');
no_secrets($r->{body}, 'JSON');

($r) = get('/health', method => 'POST');
is($r->{status}, 405, 'POST: 405');
$r = get('/health', method => 'HEAD');
is($r->{status}, 200, 'HEAD: 200');
is($r->{body}, '', 'HEAD: no body');

# --- counters: exactly N more after N requests over both workers --------

$pg->add_session("tok-c-$_", "user-c-$_", 3600) for 1 .. 8;
$redis->cli('SET', 'session:tok-c-7', '{"user_id":"user-c-7","expires_at":1}');
$redis->cli('SET', 'session:tok-c-8', 'not json at all');

my ($before) = (doc())[1];
my @plan = (
    (map { "tok-c-$_" } 1 .. 6, 1 .. 6),          # MISS, then HIT or MISS
    'tok-c-7', 'tok-c-8',                         # stale entries: re-checked
    (map { "tok-unknown-$_" } 1 .. 4),            # MISS (no row)
    (undef) x 4,                                  # no cookie: REJECTED
);
my @res = get_many(scalar @plan, sub ($i) {
    ('/', defined $plan[$i] ? (cookie => "session=$plan[$i]") : ())
});
# Now the unknown tokens are remembered as invalid: NEGATIVE.
ok(wait_until(sub { !grep { !$redis->key_exists("session:tok-unknown-$_") } 1 .. 4 },
              10, 0.02, 'the four negative entries'),
   'the negative entries are written');
push @res, get('/', cookie => "session=tok-unknown-$_") for 1 .. 4;
my $N = @res;

my %seen;
$seen{ $_->{headers}{'x-session-status'} // 'none' }++ for @res;
my %workers = map { ($_->{headers}{'x-worker'} // 0) => 1 } @res;
is(scalar(keys %workers), 2, "the $N requests were served by both workers");
note explain \%seen;

my ($after) = (doc())[1];
my ($m0, $m1) = map { $_->{sessionCache}{metrics} } $before, $after;
is($m1->{total} - $m0->{total}, $N, "total grew by exactly $N");
my %field = (HIT => 'hits', MISS => 'misses', NEGATIVE => 'negatives',
             BYPASS => 'bypasses', REJECTED => 'rejected', ERROR => 'errors');
for my $status (sort keys %field) {
    my $f = $field{$status};
    is($m1->{$f} - $m0->{$f}, $seen{$status} // 0,
       "$f grew by the number of $status answers (" . ($seen{$status} // 0) . ")");
}
is($seen{REJECTED}, 4, '4 REJECTED');
is($seen{NEGATIVE}, 4, '4 NEGATIVE');
is($m1->{invalidations} - $m0->{invalidations}, 2,
   'invalidations: the expired and the unreadable cached entries');
my $lookups = $m1->{hits} + $m1->{negatives} + $m1->{misses} + $m1->{bypasses};
cmp_ok(abs($m1->{hitRate} - 100 * ($m1->{hits} + $m1->{negatives}) / $lookups),
       '<', 0.01, "hitRate is the cache's share of lookups ($m1->{hitRate}%)");

# Every worker sees the same totals. Which worker answers is the kernel's
# choice (reuseport): read the document until both workers have answered
# (at least 12 times), not a fixed number of times that may all land on
# one of them.
my %totals;
my %health_workers;
my $reads = 0;
wait_until(sub {
    my ($hr, $hd) = doc();
    $totals{ $hd->{sessionCache}{metrics}{total} // 'none' }++;
    $health_workers{ $hr->{headers}{'x-worker'} // 'none' }++;
    ++$reads >= 12 && keys %health_workers >= 2;
}, 10, 0, 'the health document from both workers');
is(scalar(keys %health_workers), 2, 'the health document came from both workers');
is_deeply([keys %totals], [$m1->{total}], 'both workers report the same total');

# The pools, over both workers.
for my $b (qw(redis postgres)) {
    my $p = $after->{$b}{pool};
    is($p->{max}, 4, "$b pool: max is pool=2 times 2 workers");
    ok($p->{size} >= 1 && $p->{size} <= 4, "$b pool: 1..4 connections open ($p->{size})");
    ok($p->{available} <= $p->{size}, "$b pool: available ($p->{available}) <= size");
    # at rest, only the probe of the health request itself holds one
    cmp_ok($p->{available}, '>=', $p->{size} - 1,
           "$b pool: at rest, all but the probe's connection available");
    is($p->{pending}, 0, "$b pool: nothing pending at rest");
}
is_deeply($after->{sessionCache}{pool}, $after->{redis}{pool},
          'sessionCache.pool is the Redis pool');

# --- Prometheus ---------------------------------------------------------

sub prometheus_shape ($body, $what) {
    my (%help, %type, @problems);
    for my $line (split /\n/, $body) {
        if ($line =~ /^# HELP (\S+) \S/) { $help{$1} = 1; next }
        if ($line =~ /^# TYPE (\S+) (\S+)$/) { $type{$1} = $2; next }
        my ($name) = $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)/ or next;
        # a histogram's samples carry its name plus _bucket, _sum, _count
        $name = $1 if $name =~ /^(.*)_(?:bucket|sum|count)$/
                      && ($type{$1} // '') eq 'histogram';
        push @problems, "$name has no HELP" unless $help{$name};
        push @problems, "$name has no TYPE" unless $type{$name};
    }
    for my $name (keys %type) {
        push @problems, "$name: not prefixed" unless $name =~ /^nginx_session_cache_/;
        push @problems, "$name: a counter not ending in _total"
            if $type{$name} eq 'counter' && $name !~ /_total$/;
        push @problems, "$name: TYPE without HELP" unless $help{$name};
    }
    ok(!@problems, "$what: every metric has HELP and TYPE, the prefix, counters in _total")
        or diag join "\n", @problems;
    return \%type;
}

$r = get('/health?format=prometheus');
is($r->{status}, 200, 'Prometheus: 200');
is($r->{headers}{'content-type'}, 'text/plain; version=0.0.4',
   'Prometheus: text/plain; version=0.0.4');
promtool_ok($r->{body}, 'both up');
my $types = prometheus_shape($r->{body}, 'both up');
is($types->{nginx_session_cache_pool_size}, 'gauge', 'the pool figures are gauges');
is($types->{nginx_session_cache_breaker_state}, 'gauge', 'the breaker state is a gauge');
like($r->{body}, qr/^nginx_session_cache_requests_total \d+$/m, 'the request total');
like($r->{body}, qr/^nginx_session_cache_status\{status="healthy"\} 1$/m,
     'Prometheus: healthy');
like($r->{body}, qr/^nginx_session_cache_breaker_state\{backend="redis",state="closed"\} 1$/m,
     'Prometheus: the Redis breaker is closed');
no_secrets($r->{body}, 'Prometheus');

# --- latency threshold ----------------------------------------------------

($r, $d) = doc('/health-strict');
is($r->{status}, 200, 'threshold=0ms: 200');
is($d->{status}, 'degraded', 'threshold=0ms: degraded');
ok((grep { /above the 0 ms threshold/ } @{ $d->{errors} }),
   'threshold=0ms: the slow probe is named in errors')
    or diag explain $d->{errors};

# --- status with backends down ---------------------------------------------

sub expect_status ($what, $code, $status, $err_re) {
    my ($r, $d) = doc();
    is($r->{status}, $code, "$what: HTTP $code");
    is($d->{status}, $status, "$what: $status");
    if ($err_re) {
        ok((grep { $_ =~ $err_re } @{ $d->{errors} }), "$what: the reason in errors")
            or diag explain $d->{errors};
    } else {
        is_deeply($d->{errors}, [], "$what: no errors");
    }
    # the probes' deadline is 1 s (timeout=1s); 3 s leaves a loaded
    # machine room and still fails a probe that outlived its deadline
    cmp_ok($r->{ms}, '<', 3000, sprintf("$what: answered in %.0f ms", $r->{ms}));
    my ($pr) = get('/health?format=prometheus');
    is($pr->{status}, $code, "$what: Prometheus, HTTP $code too");
    like($pr->{body}, qr/^nginx_session_cache_status\{status="$status"\} 1$/m,
         "$what: Prometheus says $status");
    promtool_ok($pr->{body}, $what);
    no_secrets($r->{body} . $pr->{body}, $what);
    return $d;
}

$redis->stop;
$d = expect_status('Redis down', 200, 'degraded', qr/^redis: not answering/);
ok(!$d->{redis}{connected}, 'Redis down: redis.connected is false');
ok($d->{postgres}{connected}, 'Redis down: postgres.connected is true');
is($d->{sessionCache}{healthy}, JSON::PP::false, 'Redis down: sessionCache.healthy is false');

$redis->start;
ok(wait_until(sub { (doc())[1]{status} eq 'healthy' }, 10, 0.2, 'a healthy document'),
   'Redis back: healthy again without restarting nginx');

$pg->stop;
$d = expect_status('Postgres down', 200, 'degraded', qr/^postgres: not answering/);
ok($d->{redis}{connected}, 'Postgres down: redis.connected is true');
ok(!$d->{postgres}{connected}, 'Postgres down: postgres.connected is false');

$redis->stop;
my ($m_before) = (doc())[1]{sessionCache}{metrics}{errors};
$d = expect_status('both down', 503, 'unhealthy', qr/^redis: not answering/);
ok((grep { /^postgres: not answering/ } @{ $d->{errors} }), 'both down: Postgres named too');
is(get('/', cookie => 'session=tok-h-1')->{status}, 503, 'both down: a protected request, 503');
is((doc())[1]{sessionCache}{metrics}{errors} - $m_before, 1, 'both down: errors grew by 1');

$pg->start;
$redis->start;
ok(wait_until(sub { (doc())[1]{status} eq 'healthy' }, 10, 0.2, 'a healthy document'),
   'both back: healthy');

# --- reload and crash: the counters go on, the pools are not counted twice

my $total = (doc())[1]{sessionCache}{metrics}{total};
$nginx->reload;
# the new workers claim their slots as they start, a moment after they exist
my $reload_max;
ok(wait_until(sub { $d = (doc())[1]; ($reload_max = $d->{redis}{pool}{max} // 0) == 4 },
              10, 0.05, 'pool max 4 after the reload'),
   "after a reload: the old workers' pools are gone ($reload_max)");
is($d->{sessionCache}{metrics}{total}, $total, 'after a reload: the same total');

unlike($nginx->error_log, qr/\Q$REDIS_PW\E|\Q${\ $pg->password }\E/,
       'the error log holds no password');
no_alerts($nginx);

# A worker killed: its slot is ignored, then reused by its replacement.
my $crash = start_nginx(http => <<~"NGX");
    session_cache_redis $REDIS_URL pool=3;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /health { session_cache_health; }
    }
    NGX
get_many(6, sub ($i) { ('/health') });
my ($victim) = $crash->worker_pids;
kill 'KILL', $victim;
ok(wait_until(sub {
    my @w = $crash->worker_pids;
    @w == 2 && !grep { $_ == $victim } @w;
}, 10, 0.02, 'a new worker'), 'a worker killed: the master starts another');
# the new worker claims its slot when it starts, a moment after it exists
my $max;
ok(wait_until(sub { $d = (doc())[1]; ($max = $d->{redis}{pool}{max} // 0) == 6 },
              10, 0.05, 'pool max 6'),
   "a worker killed: pool max counts the 2 live workers ($max)");
ok($d->{redis}{pool}{size} <= 6, 'a worker killed: its connections are not counted');

# --- the breakers: shown, and never fed by the probes ---------------------

my $brk = start_nginx(http => protected_site(
    redis    => "$REDIS_URL pool=2 connect_timeout=300ms timeout=200ms",
    postgres => qq{"$PG_DSN" pool=2},
    http     => 'session_cache_breaker errors=0% min_requests=1 cooldown=30s;',
    server   => "location = /health { session_cache_health threshold=1s; }\n"));

$redis->stop;
for (1 .. 4) {
    ($r, $d) = doc();
    is($d->{redis}{breaker}, 'closed', "Redis down, health probe $_: the breaker stays closed");
}
is(get('/', cookie => 'session=tok-h-1')->{status}, 200,
   'Redis down: a session request (BYPASS) opens the breaker');
$redis->start;
($r, $d) = doc();
is($d->{redis}{breaker}, 'open', 'breaker open: redis.breaker is "open"');
ok($d->{redis}{connected}, 'breaker open: the probe still reaches Redis');
is($d->{status}, 'degraded', 'breaker open: degraded');
ok((grep { $_ eq 'redis: breaker open' } @{ $d->{errors} }), 'breaker open: named in errors')
    or diag explain $d->{errors};
$r = get('/health?format=prometheus');
like($r->{body}, qr/^nginx_session_cache_breaker_state\{backend="redis",state="open"\} 1$/m,
     'breaker open: Prometheus says so');
no_alerts($brk, 'the breaker nginx: no alerts');

done_testing;
