# nginx -t for the primary/standby options (SPEC §11, issue 15): a host
# list with a name that does not resolve, target_session_attrs and sslmode
# values libpq would refuse only when a worker connects, load_balance= with
# a value other than random, libpq 16's load_balance_hosts: each fails
# naming the directive and the problem, and no password is printed. A
# good multi-host configuration passes.

use v5.36;
use Test::More;
use SessionCache::Test;

my $PW = 'Pg-T0p-Secret';

sub site ($source, $params = '') {
    return protected_site(postgres => qq{"$source" $params});
}

sub fails ($name, $source, $params, $problem) {
    my ($rc, $out) = check_config(http => site($source, $params));
    isnt($rc, 0, "nginx -t rejects $name");
    like($out, qr/session_cache_postgres: /, "$name: the directive is named")
        or diag $out;
    like($out, $problem, "$name: the problem is named") or diag $out;
    unlike($out, qr/\Q$PW\E/, "$name: no password");
}

my $base = "dbname=sessions user=nginx password=$PW";

my ($rc, $out) = check_config(http => site(
    "host=127.0.0.1,localhost port=5432,5433 $base "
    . 'target_session_attrs=prefer-standby sslmode=verify-full',
    'load_balance=random'));
is($rc, 0, 'nginx -t accepts a host list with prefer-standby and '
         . 'load_balance=random') or diag $out;

fails('an unresolvable host in a list',
      "host=127.0.0.1,no-such-host.invalid port=5432,5432 $base", '',
      qr/could not translate host name "no-such-host\.invalid"/);
fails('target_session_attrs=bogus',
      "host=127.0.0.1,127.0.0.1 port=5432,5433 $base "
      . 'target_session_attrs=bogus', '',
      qr/invalid target_session_attrs "bogus" \(expected any, read-write, /);
fails('target_session_attrs=bogus in a URI',
      "postgresql://nginx:$PW\@127.0.0.1:5432,127.0.0.1:5433/sessions"
      . '?target_session_attrs=bogus', '',
      qr/invalid target_session_attrs "bogus"/);
fails('sslmode=verify', "host=127.0.0.1 $base sslmode=verify", '',
      qr/invalid sslmode "verify" \(expected disable, allow, prefer, /);
fails('load_balance=sometimes', "host=127.0.0.1 $base",
      'load_balance=sometimes',
      qr/invalid load_balance "sometimes", expected "random"/);
fails("libpq 16's load_balance_hosts",
      "host=127.0.0.1 $base load_balance_hosts=random", '',
      qr/invalid connection option "load_balance_hosts".*load_balance=random/);

# load_balance= belongs to Postgres alone
($rc, $out) = check_config(http => protected_site(
    redis => 'redis://127.0.0.1:6379/0 load_balance=random'));
isnt($rc, 0, 'session_cache_redis has no load_balance=');
like($out, qr/session_cache_redis: unknown parameter "load_balance=random"/,
     '... an unknown parameter there') or diag $out;

done_testing;
