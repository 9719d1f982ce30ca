package SessionCache::Load;

# Bounded background load for fault tests: a child process sends batches
# of concurrent requests (valid tokens, invalid tokens, an unprotected
# page, in turn) until stopped, and records every answer. The parent breaks
# backends meanwhile, then reads the record:
#
#   my $load = start_load(tokens => {valid => \@good, invalid => \@bad},
#                         public => '/public.html');
#   ... stop Redis, start it again ...
#   my @r = $load->stop;        # {t0, t1, ms, kind, status, sstatus}
#   my @bad = unexpected(\@r);  # valid != 200, invalid != 401, public != 200
#
# Token kinds are free; unexpected() knows valid (200) and invalid (401),
# others need their statuses named.
#
# The load is bounded: `concurrency` requests at a time (4), a pause
# between batches (20 ms), and at most `max_seconds` (60) in all.

use v5.36;
use Exporter qw(import);
use File::Temp qw(tempfile);
use POSIX ();
use Time::HiRes qw(time sleep);

use SessionCache::Test qw(send_many collect);

our @EXPORT = qw(start_load unexpected summarize first_time);

sub start_load (%o) {
    my %tokens = %{ $o{tokens} // {} };
    my @kinds = sort keys %tokens;
    die "start_load: no tokens\n" unless grep { @{ $tokens{$_} } } @kinds;
    # interleave kinds so every batch holds some of each
    my %left = map { $_ => [ @{ $tokens{$_} } ] } @kinds;
    my @mixed;
    while (grep { @{ $left{$_} } } @kinds) {
        for my $k (@kinds) {
            push @mixed, [$k, shift @{ $left{$k} }] if @{ $left{$k} };
        }
        push @mixed, ['public', undef] if $o{public};
    }

    my ($fh, $file) = tempfile('session-cache-load-XXXXXX', TMPDIR => 1,
                               UNLINK => 1);
    close $fh;

    my $conc  = $o{concurrency} // 4;
    my $pause = $o{pause} // 0.02;
    my $max   = $o{max_seconds} // 60;
    my $port  = $o{port};
    my $path  = $o{path} // '/';

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $stop = 0;
        $SIG{TERM} = sub { $stop = 1 };
        open my $out, '>', $file or POSIX::_exit(2);
        $out->autoflush(1);
        my $n = 0;
        my $until = time + $max;
        while (!$stop && time < $until) {
            my @batch = map { $mixed[($n + $_) % @mixed] } 0 .. $conc - 1;
            $n += $conc;
            my @res = collect(send_many($conc, sub ($k) {
                my ($kind, $tok) = @{ $batch[$k] };
                my %opt = (timeout => 10);
                $opt{port} = $port if $port;
                return ($o{public}, %opt) if $kind eq 'public';
                return ($path, %opt, cookie => "session=$tok");
            }));
            for my $k (0 .. $#res) {
                my $r = $res[$k];
                printf $out "%.6f %.6f %s %d %s\n", $r->{t0}, $r->{t1},
                    $batch[$k][0], $r->{status},
                    $r->{headers}{'x-session-status'} // '-';
            }
            sleep $pause;
        }
        close $out;
        POSIX::_exit(0);
    }

    return bless { pid => $pid, file => $file, started => time },
        __PACKAGE__;
}

sub pid ($self) { $self->{pid} }

# Stop the load; every answer it got, in the order sent.
sub stop ($self) {
    if (my $pid = delete $self->{pid}) {
        kill 'TERM', $pid;
        waitpid $pid, 0;
    }
    open my $in, '<', $self->{file} or die "load record: $!";
    my @r;
    while (<$in>) {
        my ($t0, $t1, $kind, $status, $ss) = split;
        push @r, { t0 => $t0, t1 => $t1, ms => ($t1 - $t0) * 1000,
                   kind => $kind, status => $status, sstatus => $ss };
    }
    return @r;
}

# The answers that break the contract: a valid session not let through, an
# invalid one not refused, the unprotected page not served. %allow adds
# statuses that are acceptable in a scenario (e.g. valid => [503]).
sub unexpected ($recs, %allow) {
    my %ok = (valid => [200], invalid => [401], public => [200]);
    push @{ $ok{$_} }, @{ $allow{$_} } for keys %allow;
    return grep {
        my $r = $_;
        !grep { $r->{status} == $_ } @{ $ok{ $r->{kind} } // [] };
    } @$recs;
}

# "N requests (kind: status/sstatus=count ...)" for notes and diagnostics.
sub summarize ($recs) {
    my %c;
    $c{"$_->{kind} $_->{status}/$_->{sstatus}"}++ for @$recs;
    return scalar(@$recs) . ' requests: '
        . join ', ', map { "$_=$c{$_}" } sort keys %c;
}

# The start time of the first record at or after $since matching $pred.
sub first_time ($recs, $since, $pred) {
    for my $r (sort { $a->{t0} <=> $b->{t0} } @$recs) {
        next if $r->{t0} < $since;
        return $r->{t0} if $pred->($r);
    }
    return undef;
}

DESTROY ($self) {
    local ($@, $!, $?);
    if (my $pid = $self->{pid}) {
        kill 'TERM', $pid;
        waitpid $pid, 0;
    }
}

1;
