package SessionCache::RedisConn;

# One persistent RESP2 connection to a test Redis, for tests that send
# many commands (redis-cli costs a process per command):
#
#   my $rc = SessionCache::RedisConn->new($redis->port);
#   $rc->cmd('DEL', 'session:abc');                  # 1
#   my @r = $rc->pipeline(map { ['SET', "k$_", 'v'] } 1 .. 50);
#
# Replies: a string (status, bulk), an integer, undef (nil), an array
# reference, or an error as a string starting with "-" (never dies on it).
# Blocking, with a timeout per reply; dies on a lost connection.

use v5.36;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);
use List::Util qw(max);

sub new ($class, $port, %o) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or die "redis connection to $port: $!";
    $s->autoflush(1);
    my $self = bless { sock => $s, buf => '', sel => IO::Select->new($s),
                       timeout => $o{timeout} // 10 }, $class;
    if (defined $o{password}) {
        my $r = $self->cmd('AUTH', $o{password});
        die "redis AUTH: $r\n" if $r =~ /^-/;
    }
    return $self;
}

sub _encode (@args) {
    return '*' . @args . "\r\n"
        . join '', map { '$' . length($_) . "\r\n$_\r\n" } @args;
}

sub cmd ($self, @args) { return ($self->pipeline(\@args))[0] }

# Sends every command in one write, then reads their replies in order.
sub pipeline ($self, @cmds) {
    my $out = join '', map { _encode(@$_) } @cmds;
    my $off = 0;
    while ($off < length $out) {
        my $n = syswrite $self->{sock}, $out, length($out) - $off, $off;
        die "redis write: $!" unless defined $n;
        $off += $n;
    }
    return map { $self->_reply } @cmds;
}

# A line (without CRLF) from the buffer, reading more as needed.
sub _line ($self) {
    while ((my $i = index $self->{buf}, "\r\n") < 0) { $self->_fill }
    my $i = index $self->{buf}, "\r\n";
    my $line = substr $self->{buf}, 0, $i;
    substr($self->{buf}, 0, $i + 2) = '';
    return $line;
}

sub _fill ($self) {
    my $deadline = time + $self->{timeout};
    until ($self->{sel}->can_read(max(0, $deadline - time))) {
        # a signal interrupts the wait: wait on
        die "redis: no reply within $self->{timeout}s\n" if time >= $deadline;
    }
    my $n = sysread $self->{sock}, my $chunk, 65536;
    die "redis: connection lost\n" unless $n;
    $self->{buf} .= $chunk;
}

sub _reply ($self) {
    my $line = $self->_line;
    my ($t, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $t eq '+';
    return $line if $t eq '-';
    return 0 + $rest if $t eq ':';
    if ($t eq '$') {
        return undef if $rest < 0;
        $self->_fill while length $self->{buf} < $rest + 2;
        my $v = substr $self->{buf}, 0, $rest;
        substr($self->{buf}, 0, $rest + 2) = '';
        return $v;
    }
    if ($t eq '*') {
        return undef if $rest < 0;
        return [ map { $self->_reply } 1 .. $rest ];
    }
    die "redis: unexpected reply line '$line'\n";
}

sub close ($self) { CORE::close $self->{sock} if $self->{sock} }

1;
