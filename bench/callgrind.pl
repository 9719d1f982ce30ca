#!/usr/bin/env perl
# Instructions and heap allocations per request on the hit path, counted by
# valgrind's callgrind: figures that other load on the machine does not
# move, for comparing two builds of the module. Allocations are the calls
# to malloc, calloc, realloc and posix_memalign/memalign/aligned_alloc
# (operator new calls malloc) made in the worker: the check's own figure,
# the difference with the static file, must be 0. nginx (one worker) runs under callgrind, serves a
# warm-up and then N or 2N requests (one at a time on a keep-alive
# connection, one session cookie each, all cached) to the static location or the protected one; the difference
# between the two worker totals, over N, is the cost of one request.
#
#   perl bench/callgrind.pl            # after ./build.sh and bench/setup.sh
#
# Environment: BENCH_REQUESTS (2000), SESSION_CACHE_MODULE; BENCH_ATTRS=1
# adds a run whose cached sessions carry two attributes (role, tenant_id:
# Redis database 1 holds them) and what they cost over the plain hit.

use v5.36;
use FindBin ();
use lib "$FindBin::Bin/../t/lib";
use SessionCache::Test;
use IO::Socket::INET;
use Time::HiRes qw(sleep);

my $N = $ENV{BENCH_REQUESTS} // 2000;
my $dir = $FindBin::Bin;
SessionCache::Test::_which('valgrind') or die "valgrind not found: apt-get install valgrind\n";

my $redis = start_redis();
my $expires = time + 86400;
{
    my $file = "$redis->{dir}/seed.resp";
    open my $fh, '>', $file or die "$file: $!";
    # every token a run may use: the warm-up's 500 and the runs' 2N
    my $resp = sub (@a) {
        print {$fh} '*' . @a . "\r\n", map { '$' . length($_) . "\r\n$_\r\n" } @a;
    };
    for my $db (0, $ENV{BENCH_ATTRS} ? 1 : ()) {
        $resp->('SELECT', $db);
        for my $i (1 .. ($N < 250 ? 500 : 2 * $N)) {
            my $attrs = $db ? sprintf(',"attrs":{"role":"admin","tenant_id":"%d"}', $i % 1000) : '';
            $resp->('SET', sprintf('session:bench%027d', $i),
                    sprintf('{"user_id":"%08x-7d1e-4c2a-9f00-%012d","expires_at":%d%s}', $i, $i, $expires, $attrs));
        }
    }
    close $fh;
    system("redis-cli -h 127.0.0.1 -p $redis->{port} --pipe < $file >/dev/null") == 0
        or die "seeding redis failed\n";
}

# One nginx under callgrind: $n requests to $path after a warm-up, then a
# graceful stop; the worker's instruction total.
my %by_caller;    # path => run (1: N, 2: 2N) => calling function => calls
my $N2;

sub total ($path, $n, $db = 0) {
    $N2 = $n > $N;
    my $nginx = new_nginx(workers => 1);
    my $out = "$nginx->{dir}/callgrind.out";
    my $wrapper = "$nginx->{dir}/nginx-callgrind";
    open my $w, '>', $wrapper or die "$wrapper: $!";
    print {$w} "#!/bin/sh\nexec valgrind --tool=callgrind "
             . "--callgrind-out-file=$out.%p /usr/sbin/nginx \"\$@\"\n";
    close $w;
    chmod 0755, $wrapper;
    $nginx->{bin} = $wrapper;
    $nginx->write_html("$_/index.html", "ok\n") for qw(static app);
    # root: the worker writes its callgrind file into the root-owned dir
    $nginx->start(workers => 1, main => "user root;", http => <<~"NGX");
        session_cache_redis ${\ $redis->url(db => $db) } pool=10 timeout=5s;
        server {
            listen 127.0.0.1:%%PORT%%;
            access_log off;
            root %%HTML%%;
            location /static/ { }
            location /app/ { auth_session \$cookie_session; }
        }
        NGX
    my ($worker) = $nginx->worker_pids;
    run($nginx, $path, 500);
    run($nginx, $path, $n);
    $nginx->stop;
    my ($total, $allocs) = (0, 0);
    my (%name, $caller, $callee);
    for (split /\n/, SessionCache::Test::_slurp("$out.$worker")) {
        # "fn=(id) name" the first time a name is used, "fn=(id)" after
        if (/^(c?)fn=\((\d+)\)(?: (.*))?$/) {
            $name{$2} = $3 if defined $3;
            if ($1) { $callee = $name{$2} } else { $caller = $name{$2} }
        } elsif (/^calls=(\d+)/ && defined $callee) {
            my $n = $1;
            if ($callee =~ /^(?:malloc|calloc|realloc|posix_memalign|memalign|aligned_alloc|valloc)$/) {
                $allocs += $n;
                $by_caller{$path}{$N2 ? 2 : 1}{$caller} += $n;
            }
            undef $callee;
        } elsif (/^(?:summary|totals):\s+(\d+)/) {
            $total ||= $1;
        }
    }
    die "no callgrind total for worker $worker\n" unless $total;
    return ($total, $allocs);
}

# $n requests, one after the other, on one keep-alive connection, each
# with its own session cookie. (Not wrk: it always runs its full -d time.)
sub run ($nginx, $path, $n) {
    my $s;
    for my $i (1 .. $n) {
        # a new connection every 500 requests (keepalive_requests 1000)
        if ($i % 500 == 1) {
            close $s if $s;
            $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                PeerPort => $nginx->port, Proto => 'tcp', Timeout => 30)
                or die "connect: $!";
        }
        my $tok = sprintf 'bench%027d', $i;
        print {$s} "GET $path HTTP/1.1\r\nHost: bench\r\nCookie: session=$tok\r\n\r\n";
        my $head = '';
        while ($head !~ /\r\n\r\n/) {
            sysread($s, $head, 4096, length $head) or die "read: $!";
        }
        die "$path: $1 for token $i\n" if $head !~ m{^HTTP/1.1 200} && $head =~ m{^(\S+ \d+)};
        my ($len) = $head =~ /Content-Length: (\d+)/i;
        my $body = length($head) - index($head, "\r\n\r\n") - 4;
        while ($body < ($len // 0)) {
            my $got = sysread($s, my $buf, $len - $body) or die "read: $!";
            $body += $got;
        }
    }
    close $s;
    return $n;
}

# The difference between N and 2N requests: start-up, warm-up and
# shutdown cancel out.
sub per_request ($name, $path, $db = 0) {
    my ($ir2, $alloc2) = total($path, 2 * $N, $db);
    my ($ir1, $alloc1) = total($path, $N, $db);
    my ($ir, $allocs) = (($ir2 - $ir1) / $N, ($alloc2 - $alloc1) / $N);
    printf "%-30s %8.0f instructions, %6.3f allocations per request\n",
        $name, $ir, $allocs;
    return ($ir, $allocs);
}

# BENCH_ALLOC_CALLERS=1: the functions whose allocations grow with the
# number of requests, for chasing one down
sub callers ($path) {
    my $c = $by_caller{$path};
    for my $f (sort keys %{ { %{ $c->{1} }, %{ $c->{2} } } }) {
        my $d = ($c->{2}{$f} // 0) - ($c->{1}{$f} // 0);
        printf "    %+6d  %s\n", $d, $f if $d;
    }
}

my ($a, $a_allocs) = per_request('static file, no check', '/static/index.html');
my ($b, $b_allocs) = per_request('module, session cached', '/app/index.html');
printf "%-30s %8.0f instructions, %6.3f allocations per request\n",
    'the check costs', $b - $a, $b_allocs - $a_allocs;
if ($ENV{BENCH_ATTRS}) {
    my ($c, $c_allocs) = per_request('cached, with 2 attributes', '/app/index.html', 1);
    printf "%-30s %8.0f instructions, %6.3f allocations per request (%+.1f%% of the hit)\n",
        'the 2 attributes cost', $c - $b, $c_allocs - $b_allocs, 100 * ($c - $b) / $b;
}
if ($ENV{BENCH_ALLOC_CALLERS}) {
    print "allocations, 2N run minus N run, by calling function:\n";
    for my $path ('/static/index.html', '/app/index.html') {
        print "  $path\n";
        callers($path);
    }
}
