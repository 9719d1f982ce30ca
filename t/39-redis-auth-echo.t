# Redis echoes the password back (issue 10, item 2): a server that renamed
# AUTH away refuses it with "ERR unknown command 'AUTH', with args
# beginning with: 'default' '<password>'". The module reports the error
# code only ("AUTH refused: ERR unknown command"): the password is neither
# in the error log nor in the health document, JSON or Prometheus. Same
# for a GET that Redis refuses while quoting its key, which holds the
# token.

use v5.36;
use Test::More;
use File::Temp qw(tempdir);
use SessionCache::Test;

my $pg = start_postgres();
$pg->add_session('tok-auth-echo-1', 'user-echo', 3600);

my $password = 'Zq7-echo-pw-4411';
my $dir = tempdir('sc-redis-echo-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my @servers;

# a redis-server with its own command line (start_redis has no option to
# rename commands); stopped at the end
sub redis_with (@args) {
    my $port = free_port();
    my $log = "$dir/redis-$port.log";
    my $pid = SessionCache::Test::_spawn(
        cmd => ['redis-server', '--port', $port, '--bind', '127.0.0.1',
                '--save', '', '--appendonly', 'no', '--dir', $dir,
                '--logfile', '', @args],
        stdout => $log, stderr => $log);
    push @servers, $pid;
    wait_until(sub { SessionCache::Test::_port_accepts($port) }, 10)
        or die "redis-server on $port did not start:\n"
               . SessionCache::Test::_slurp($log);
    return $port;
}

my $auth_port = redis_with('--requirepass', $password,
                           '--rename-command', 'AUTH', '');
my $get_port = redis_with('--rename-command', 'GET', '');

for my $case (
    ['AUTH renamed away', "redis://default:$password\@127.0.0.1:$auth_port/0",
     'AUTH refused: ERR unknown command', $password],
    ['GET renamed away', "redis://127.0.0.1:$get_port/0",
     'redis GET failed: ERR unknown command', 'tok-auth-echo-1'],
) {
    my ($name, $url, $said, $secret) = @$case;
    my $nginx = start_nginx(http => protected_site(
        redis    => "$url pool=2 timeout=1s",
        postgres => '"' . $pg->dsn . '" pool=2',
        server   => 'location = /health { session_cache_health; }'));

    my $r = get('/', cookie => 'session=tok-auth-echo-1');
    is($r->{status}, 200, "$name: 200 through Postgres");
    is($r->{headers}{'x-session-status'}, 'BYPASS', "$name: BYPASS");

    my $json = get('/health')->{body};
    my $prom = get('/health?format=prometheus')->{body};
    ok(wait_until(sub { $nginx->error_log =~ /\Q$said\E/ }),
       "$name: the error log says \"$said\"");
    like($json, qr/redis: [^"]*\Q$said\E/,
         "$name: the health document names the cause") if $name =~ /AUTH/;

    # the real server really quoted it: the test would catch an echo
    my $log = $nginx->error_log;
    unlike($log, qr/\Q$secret\E/, "$name: the error log does not hold it");
    unlike($json, qr/\Q$secret\E/, "$name: the JSON document does not hold it");
    unlike($prom, qr/\Q$secret\E/, "$name: the Prometheus text does not hold it");
    unlike($log, qr/with args|beginning with/,
           "$name: Redis's argument list is not repeated");
    no_alerts($nginx, "$name: no alerts");
}

# what Redis itself says, so that the cases above test something
{
    my ($rc, $out) = SessionCache::Test::_run(
        cmd => ['redis-cli', '-p', $auth_port, '--user', 'default', '--pass',
                $password, '--no-auth-warning', 'PING']);
    like($out, qr/\Q$password\E/, 'that redis does quote the password back');
}

kill 'TERM', @servers;
waitpid $_, 0 for @servers;

done_testing;
