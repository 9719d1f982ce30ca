package SessionCache::SlowProxy;

# A TCP proxy on a free loopback port that passes requests on at once and
# holds every reply for `delay` seconds: a backend that answers, but too
# late. Runs in a child process; stopped by its pid.
#
#   my $slow = SessionCache::SlowProxy->start(to => $redis->port, delay => 0.3);
#   "redis://127.0.0.1:" . $slow->port . "/0"

use v5.36;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time);

use SessionCache::Test qw(free_port);

sub start ($class, %o) {
    my $port = free_port();
    my $listen = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 64,
        ReuseAddr => 1, Proto => 'tcp') or die "slow proxy: listen: $!";

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $SIG{TERM} = sub { POSIX::_exit(0) };
        _serve($listen, $o{to}, $o{delay} // 0.3);
        POSIX::_exit(0);
    }
    close $listen;
    return bless { pid => $pid, port => $port, owner => $$ }, $class;
}

sub port ($self) { $self->{port} }

sub _serve ($listen, $to, $delay) {
    my $sel = IO::Select->new($listen);
    my %peer;     # fileno -> the other socket
    my %up;       # fileno of an upstream socket -> 1
    my @held;     # [release time, socket, bytes]

    while (1) {
        my $now = time;
        while (@held && $held[0][0] <= $now) {
            my (undef, $s, $bytes) = @{ shift @held };
            syswrite $s, $bytes if $s->opened;
        }
        my $wait = @held ? $held[0][0] - $now : 1;
        for my $s ($sel->can_read($wait > 0 ? $wait : 0)) {
            if ($s == $listen) {
                my $c = $listen->accept or next;
                my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                    PeerPort => $to, Proto => 'tcp');
                if (!$u) { close $c; next; }
                $peer{ fileno $c } = $u;
                $peer{ fileno $u } = $c;
                $up{ fileno $u } = 1;
                $sel->add($c, $u);
                next;
            }
            next unless defined fileno $s;    # closed in this round
            my $other = $peer{ fileno $s };
            my $n = sysread $s, my $buf, 65536;
            if (!$n) {
                for my $x ($s, $other) {
                    next unless $x && defined(my $fn = fileno $x);
                    $sel->remove($x);
                    delete $peer{$fn};
                    delete $up{$fn};
                    close $x;
                }
                next;
            }
            if ($up{ fileno $s }) {
                push @held, [time + $delay, $other, $buf];
            } else {
                syswrite $other, $buf;
            }
        }
    }
}

sub stop ($self) {
    return unless $self->{pid} && $self->{owner} == $$;
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    delete $self->{pid};
}

DESTROY ($self) {
    local ($@, $!, $?);
    $self->stop;
}

1;
