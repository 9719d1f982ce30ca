package SessionCache::Psql;

# One persistent psql session to a test Postgres, for tests that run many
# statements and want to know when each one committed (a psql process per
# statement costs tens of milliseconds):
#
#   my $db = SessionCache::Psql->new($pg);          # superuser, db sessions
#   $db->run("UPDATE platform.user_sessions SET revoked_at = now() ...");
#   my @rows = $db->run("SELECT token FROM ...");    # lines, '|'-separated
#
# run() returns once psql has answered the statement (autocommit: it has
# committed), and dies with Postgres's error. Blocking, with a timeout.

use v5.36;
use IPC::Open3 qw(open3);
use IO::Select;
use Symbol qw(gensym);
use Time::HiRes qw(time);

sub new ($class, $pg, %o) {
    my ($in, $out);
    my $pid = open3($in, $out, undef,
        $pg->{psql}, '-X', '-q', '-A', '-t', '-n',
        '-h', $pg->{sock}, '-p', $pg->port, '-U', 'postgres',
        '-d', $o{db} // 'sessions');
    $in->autoflush(1);
    my $self = bless { pid => $pid, in => $in, out => $out, buf => '',
                       n => 0, timeout => $o{timeout} // 20 }, $class;
    $self->run('SET client_min_messages = warning');
    return $self;
}

sub run ($self, $sql) {
    my $mark = '__psql_done_' . ++$self->{n} . '__';
    $sql =~ s/;?\s*\z/;/;
    print { $self->{in} } "$sql\n\\echo $mark\n";
    my $sel = IO::Select->new($self->{out});
    my $deadline = time + $self->{timeout};
    until ($self->{buf} =~ /^\Q$mark\E\n/m) {
        my $left = $deadline - time;
        die "psql: no answer within $self->{timeout}s to: $sql\n"
            if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $self->{out}, $self->{buf}, 65536, length $self->{buf};
        die "psql exited\n" unless $n;
    }
    $self->{buf} =~ s/\A(.*?)^\Q$mark\E\n//ms;
    my @lines = grep { length } split /\n/, $1;
    my @err = grep { /^(?:psql:.*)?(?:ERROR|FATAL):/ } @lines;
    die "psql: @err\nSQL: $sql\n" if @err;
    return @lines;
}

sub close ($self) {
    return unless $self->{pid};
    close $self->{in};
    waitpid $self->{pid}, 0;
    $self->{pid} = undef;
}

sub DESTROY ($self) {
    local ($@, $!, $?);
    $self->close;
}

1;
