# The check's latency histogram (SPEC §13, issue 17):
# nginx_session_cache_check_duration_seconds{layer=...} counts every check
# once, under the layer that answered (redis, postgres, none; l1 at 0 until
# L1 exists), summed over both workers, in buckets from 100 µs to 1 s; the
# JSON document's performance.check gives the same figures as p50/p99, as
# Prometheus' histogram_quantile() would estimate them; the counts survive
# a reload and a change of worker_processes; promtool accepts the scrape.

use v5.36;
use Test::More;
use JSON::PP ();
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();
my $REDIS_URL = $redis->url;
my $PG_DSN = $pg->dsn;
my $H = session_headers();

my $http = <<~"NGX";
    session_cache_redis $REDIS_URL pool=2 timeout=1s;
    session_cache_postgres "$PG_DSN" pool=2 connect_timeout=1s timeout=1s;
    server {
        listen 127.0.0.1:%%PORT%% reuseport;
        location / {
            root %%HTML%%;
            auth_session \$cookie_session;
            $H
        }
        location = /health { session_cache_health threshold=10s timeout=2s; }
    }
    NGX

# reuseport: the kernel spreads the connections over both workers
my $nginx = start_nginx(workers => 2, http => $http);
$nginx->write_html('index.html', "ok\n");

my $NAME = 'nginx_session_cache_check_duration_seconds';
my @LAYERS = qw(l1 redis postgres none);
my @BOUNDS = qw(0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05
                0.1 0.25 0.5 1 +Inf);

# {layer => {buckets => [[le, cumulative]...], sum, count}} from a scrape
sub histogram ($body) {
    my %h;
    for (split /\n/, $body) {
        if (/^${NAME}_bucket\{layer="(\w+)",le="([^"]+)"\} (\S+)$/) {
            push @{ $h{$1}{buckets} }, [$2, $3];
        } elsif (/^${NAME}_(sum|count)\{layer="(\w+)"\} (\S+)$/) {
            $h{$2}{$1} = $3;
        }
    }
    return \%h;
}

sub scrape () {
    my $r = $nginx->get('/health?format=prometheus');
    return $r->{body};
}

sub counts () {
    my $h = histogram(scrape());
    return { map { $_ => $h->{$_}{count} // -1 } @LAYERS };
}

# histogram_quantile(q, ...) as Prometheus computes it
sub quantile ($q, $buckets) {
    my $total = $buckets->[-1][1];
    return undef unless $total;
    my $rank = $q * $total;
    my $i = 0;
    $i++ while $i < $#$buckets && $buckets->[$i][1] < $rank;
    return $buckets->[-2][0] if $i == $#$buckets;
    my ($lo, $below) = $i ? @{ $buckets->[$i - 1] } : (0, 0);
    my $hi = $buckets->[$i][0];
    return $lo + ($hi - $lo) * ($rank - $below) / ($buckets->[$i][1] - $below);
}

sub status_of ($token) {
    my $r = $nginx->get('/index.html',
                        $token ? (cookie => "session=$token") : ());
    return "$r->{status} " . ($r->{headers}{'x-session-status'} // '');
}

# --- nothing checked yet: every layer at 0, l1 too ----------------------

my $body = scrape();
my $h = histogram($body);
is_deeply([sort keys %$h], [sort @LAYERS], 'one histogram per layer, l1 included');
for my $l (@LAYERS) {
    is_deeply([map { $_->[0] } @{ $h->{$l}{buckets} }], \@BOUNDS,
              "$l: the buckets from 100 µs to 1 s, then +Inf");
    is($h->{$l}{count}, 0, "$l: nothing counted yet");
}
promtool_ok($body, 'before any check');

# --- each path, counted under its layer ---------------------------------

# Postgres: 3 valid sessions (MISS) and 2 unknown tokens (no row, 401);
# each fills Redis, waited for so that the next round is a Redis answer.
my @valid = map { "lat-valid-$_" } 1 .. 3;
my @unknown = map { "lat-unknown-$_" } 1 .. 2;
$pg->add_session($_, "user-$_", 3600) for @valid;

is(status_of($_), '200 MISS', "$_: MISS, answered by postgres") for @valid;
is(status_of($_), '401 MISS', "$_: no row, answered by postgres") for @unknown;
ok(defined $redis->wait_for_key("session:$_"), "$_: its cache entry is written")
    for @valid, @unknown;

# Redis: the same tokens again, twice: 6 HIT and 4 NEGATIVE
for (1 .. 2) {
    is(status_of($_), '200 HIT', "$_: HIT, answered by redis") for @valid;
    is(status_of($_), '401 NEGATIVE', "$_: NEGATIVE, answered by redis") for @unknown;
}

# none: no token and an implausible one, refused before any lookup
is(status_of(undef), '401 REJECTED', 'no token: REJECTED, no layer');
is(status_of('x' x 600), '401 REJECTED', 'a token of 600 bytes: REJECTED, no layer');

my %expected = (l1 => 0, redis => 10, postgres => 5, none => 2);

$body = scrape();
$h = histogram($body);
for my $l (@LAYERS) {
    my $b = $h->{$l}{buckets};
    is($h->{$l}{count}, $expected{$l}, "$l: $expected{$l} checks counted");
    is($b->[-1][1], $h->{$l}{count}, "$l: the +Inf bucket is the count");
    my @c = map { $_->[1] } @$b;
    ok(!grep({ $c[$_] < $c[$_ - 1] } 1 .. $#c), "$l: the buckets are cumulative")
        or diag "@c";
    if ($expected{$l}) {
        # no wall-clock bound: the sum is positive and below the count
        # times the largest bucket that holds anything
        my ($top) = grep { $_->[1] == $b->[-1][1] } @$b;
        my $limit = $top->[0] eq '+Inf' ? 1e9 : $top->[0] * $h->{$l}{count};
        ok($h->{$l}{sum} > 0 && $h->{$l}{sum} <= $limit,
           "$l: _sum $h->{$l}{sum} s is positive and within the buckets");
    } else {
        is($h->{$l}{sum}, 0, "$l: _sum is 0");
    }
}
promtool_ok($body, 'after checks on every path');

# the JSON document: the same counts, p50/p99 in ms as histogram_quantile
my ($r, $d) = $nginx->health('/health');
is($r->{status}, 200, 'health: 200');
my $check = $d->{performance}{check};
is_deeply([sort keys %$check], [sort @LAYERS], 'performance.check: one entry per layer');
for my $l (@LAYERS) {
    is($check->{$l}{count}, $expected{$l}, "performance.check.$l.count");
    for my $q ([p50 => 0.5], [p99 => 0.99]) {
        my $want = quantile($q->[1], $h->{$l}{buckets});
        if (defined $want) {
            ok(abs($check->{$l}{$q->[0]} - $want * 1000) < 0.001,
               "performance.check.$l.$q->[0]: $check->{$l}{$q->[0]} ms, "
               . "histogram_quantile of the scrape")
                or diag "expected ${\ ($want * 1000)} ms";
        } else {
            ok(!defined $check->{$l}{$q->[0]}, "performance.check.$l.$q->[0]: null, nothing counted");
        }
    }
}
for my $k (qw(ping set get postgres threshold)) {
    ok(exists $d->{performance}{$k}, "performance.$k is still there");
}

# --- no store answers: 503, counted under none --------------------------

$pg->stop;
$redis->stop;
is(status_of('lat-valid-1') =~ s/ .*//r, 503, 'both stores down: 503');
$expected{none}++;
is_deeply(counts(), \%expected, 'the 503 is counted under none');

# --- the counts survive a reload and a change of worker_processes -------

$nginx->reload;
is_deeply(counts(), \%expected, 'after a reload: the same counts');

$nginx->{workers} = 5;
$nginx->reload(http => $http);
is_deeply(counts(), \%expected, 'after a reload to 5 workers (a new zone): the same counts');

is(status_of(undef), '401 REJECTED', 'a check in the new workers');
$expected{none}++;
is_deeply(counts(), \%expected, 'counted on top');
promtool_ok(scrape(), 'after the reloads');

no_alerts($nginx);
done_testing;
