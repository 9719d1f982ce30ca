# The Grafana dashboard and the alert rules (contrib/, issue 17) speak of
# what the module exports: every metric name in the dashboard's queries and
# in the rules' expressions appears in a live scrape of the health
# location, every expression is valid PromQL (promtool), and the dashboard
# shows what the issue asks for (outcomes, hit ratio, latency percentiles
# from the histogram, breakers, pools).
#
# A Redis Cluster name (nginx_session_cache_redis_cluster_node_breaker_state,
# in an alert rule) needs a cluster: t/75 finds it in a cluster's scrape.
#
# L1 (SPEC §8, nginx_session_cache_l1_*): if this build knows the
# session_cache_l1 directive, nginx runs with L1 on and the L1 names must
# be in the scrape like any other; if it does not (L1 not merged yet), the
# L1 names are the only ones allowed to be missing, and the test says so.

use v5.36;
use Test::More;
use JSON::PP ();
use CPAN::Meta::YAML ();    # core Perl: reads the rules file
use File::Temp qw(tempdir);
use SessionCache::Test;

my $DASHBOARD = repo_dir() . '/contrib/grafana/session-cache.json';
my $RULES = repo_dir() . '/contrib/prometheus/session-cache.rules.yml';

sub slurp ($path) {
    open my $fh, '<', $path or die "$path: $!";
    local $/;
    return <$fh>;
}

# --- the dashboard's expressions ------------------------------------------

my $dash = JSON::PP->new->decode(slurp($DASHBOARD));
ok($dash->{uid} && $dash->{title}, 'the dashboard has a uid and a title');

my (@exprs, @panels);
sub walk ($list) {
    for my $p (@{ $list // [] }) {
        push @panels, $p unless ($p->{type} // '') eq 'row';
        push @exprs, map { $_->{expr} } grep { defined $_->{expr} } @{ $p->{targets} // [] };
        walk($p->{panels});
    }
}
walk($dash->{panels});

# the variables' queries: label_values(METRIC..., label)
my @var_queries;
for my $v (@{ $dash->{templating}{list} // [] }) {
    next unless ($v->{type} // '') eq 'query';
    my $q = ref $v->{query} ? $v->{query}{query} : $v->{query};
    push @var_queries, $q;
}
ok(@var_queries, 'the dashboard has query variables');

my @no_expr = grep { !grep { defined $_->{expr} && $_->{expr} =~ /\S/ } @{ $_->{targets} // [] } } @panels;
ok(!@no_expr, 'every panel has a query') or diag join ', ', map { $_->{title} } @no_expr;
cmp_ok(scalar @exprs, '>=', 10, scalar(@exprs) . ' queries in the dashboard');

# every selector of a module metric is scoped by the variables
my @unscoped;
for my $e (@exprs) {
    while ($e =~ /(nginx_session_cache_\w+)(\{[^}]*\})?/g) {
        push @unscoped, "$1 in: $e"
            unless ($2 // '') =~ /job=~"\$job",instance=~"\$instance"/;
    }
}
ok(!@unscoped, 'every selector follows the $job and $instance variables')
    or diag join "\n", @unscoped;

# what issue 17 asks of it
my $all = join "\n", @exprs;
for my $m (qw(hits_total misses_total negatives_total bypasses_total
              rejected_total errors_total)) {
    like($all, qr/\bnginx_session_cache_$m\b/, "outcomes per second: $m");
}
like($all, qr/rate\(nginx_session_cache_hits_total.*\/.*misses_total/s, 'a hit ratio over a window');
for my $q (qw(0.5 0.99)) {
    like($all, qr/histogram_quantile\(\Q$q\E, sum by \(le, layer\) \(rate\(nginx_session_cache_check_duration_seconds_bucket/,
         "check latency p" . ($q * 100) . " from the histogram, by layer");
}
like($all, qr/nginx_session_cache_breaker_state/, 'the breaker state');
like($all, qr/nginx_session_cache_pool_size/, 'pool use');
unlike($all, qr/nginx_session_cache:/, 'no recording rule: the dashboard needs only the module');

# --- valid PromQL: each expression as a recording rule, for promtool ------

my $dir = tempdir(CLEANUP => 1);
sub promtool_rules_ok ($exprs, $what) {
    my $file = "$dir/check.rules.yml";
    open my $fh, '>', $file or die $!;
    print {$fh} "groups:\n  - name: check\n    rules:\n";
    my $i = 0;
    for my $e (@$exprs) {
        (my $x = $e) =~ s/\$__rate_interval/5m/g;
        $x =~ s/\$(?:job|instance)\b/.*/g;
        $x =~ s/'/''/g;
        printf {$fh} "      - record: check_%d\n        expr: '%s'\n", $i++, $x;
    }
    close $fh;
    my $out = `promtool check rules $file 2>&1`;
    ok($? == 0, "$what: promtool accepts every expression") or diag $out;
}
promtool_rules_ok(\@exprs, 'the dashboard');

system('promtool', 'check', 'rules', $RULES) == 0 or fail('promtool check rules');

# --- names, against a live scrape -----------------------------------------

# Names: the module's metric names in a PromQL expression.
sub names (@exprs) {
    my %n;
    $n{$_} = 1 for map { /\b(nginx_session_cache_[A-Za-z0-9_]+)/g } @exprs;
    return sort keys %n;
}

my $rules = CPAN::Meta::YAML->read_string(slurp($RULES))
    or die CPAN::Meta::YAML->errstr;
my @rule_exprs = map { $_->{expr} } map { @{ $_->{rules} } } @{ $rules->[0]{groups} };
cmp_ok(scalar @rule_exprs, '>=', 9, scalar(@rule_exprs) . ' expressions in the rules');

my $redis = start_redis();
my $pg    = start_postgres();
my $REDIS_URL = $redis->url;
my $PG_DSN = $pg->dsn;

my ($l1_rc) = check_config(http => <<~"NGX");
    session_cache_redis $REDIS_URL;
    session_cache_l1 size=1m;
    NGX
my $have_l1 = $l1_rc == 0;
note($have_l1 ? 'this build has L1: nginx runs with it, its names are checked'
              : 'this build has no L1 yet: nginx_session_cache_l1_* names may be missing');

# generous timeouts: some families have samples only when their probe
# answered in time (DBSIZE, INFO, the probes' durations), and a probe
# that a slow machine made late must not remove a name from the scrape
my $nginx = start_nginx(http => <<~"NGX");
    session_cache_redis $REDIS_URL pool=2 timeout=5s;
    session_cache_postgres "$PG_DSN" pool=2 timeout=5s;
    @{[ $have_l1 ? 'session_cache_l1 size=1m;' : '' ]}
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { auth_session \$cookie_session; }
        location = /health { session_cache_health threshold=10s timeout=10s; }
    }
    NGX

# a check, so that every family has its samples
is($nginx->get('/')->{status}, 401, 'a request without a token: 401');
my $r = $nginx->get('/health?format=prometheus');
is($r->{status}, 200, 'the scrape: 200');

my %scraped;
for (split /\n/, $r->{body}) {
    $scraped{$1} = 1 if /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/;
}
cmp_ok(scalar keys %scraped, '>=', 20, 'the scrape has the module\'s metrics');
ok(!$have_l1 || grep({ /^nginx_session_cache_l1_/ } keys %scraped),
   'with L1 on, the scrape has L1 metrics');

for my $set (['the dashboard', [@exprs, @var_queries]],
             ['the alert rules', \@rule_exprs]) {
    my ($what, $list) = @$set;
    my @names = names(@$list);
    cmp_ok(scalar @names, '>=', 5, "$what: " . scalar(@names) . ' metric names');
    for my $n (@names) {
        if ($scraped{$n}) {
            pass("$what: $n is in the scrape");
        } elsif (!$have_l1 && $n =~ /^nginx_session_cache_l1_/) {
            pass("$what: $n is an L1 name, and this build has no L1 yet");
        } elsif ($n eq 'nginx_session_cache_redis_cluster_node_breaker_state') {
            # exported with redis-cluster:// only (three masters at least):
            # t/75-cluster-node-breaker.t scrapes it from a live cluster
            pass("$what: $n is a Redis Cluster name, scraped in t/75");
        } else {
            fail("$what: $n is in the scrape");
        }
    }
}

no_alerts($nginx);
done_testing;
