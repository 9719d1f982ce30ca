# The demo's self-check (DEMO_NO_WAIT=1): it starts its own Redis,
# Postgres and nginx, runs the sample requests, checks its own error log
# for alerts, and stops everything. (It checks its nginx's error log
# itself, so this file has no no_alerts() of its own.)

use v5.36;
use Test::More;
use SessionCache::Test;

my $demo = repo_dir() . '/demo/demo.pl';
local $ENV{DEMO_NO_WAIT} = 1;
open my $fh, '-|', $^X, $demo or die "run $demo: $!";
my $out = do { local $/; <$fh> };
close $fh;
my $rc = $? >> 8;

is($rc, 0, 'the demo exits 0 after its self-check') or diag $out;
like($out, qr/^\s+ok\s+valid cookie\s.*200.*MISS.*alice/m, 'valid cookie: 200 MISS alice');
like($out, qr/^\s+ok\s+valid cookie, again\s.*200.*HIT.*alice/m, 'again: 200 HIT alice');
like($out, qr/^\s+ok\s+bad cookie\s.*401/m, 'bad cookie: 401');
like($out, qr/^\s+ok\s+no cookie\s.*401/m, 'no cookie: 401');
like($out, qr/curl -i --cookie 'session=demo-valid-token' http:\/\/127\.0\.0\.1:\d+\/app\//,
     'it prints ready-to-paste curl commands');
like($out, qr/error log: no alerts/, 'the demo nginx logged no alerts');
like($out, qr/Self-check: all ok/, 'self-check: all ok');

done_testing;
