package SessionCache::Load;

# Bounded background load for fault tests: a child process sends requests
# at a steady rate (valid tokens, invalid tokens, an unprotected
# page, in turn) until stopped, and records every answer. The parent breaks
# backends meanwhile, then reads the record:
#
#   my $load = start_load(tokens => {valid => \@good, invalid => \@bad},
#                         public => '/public.html');
#   ... stop Redis, start it again ...
#   my @r = $load->stop;        # {t0, t1, ms, kind, status, sstatus, n}
#   my @bad = unexpected(\@r);  # valid != 200, invalid != 401, public != 200
#
# While it runs, the test waits for what the load observes rather than for
# time: $load->wait_for(20, sub ($r) { $r->{sstatus} eq 'HIT' }) (20 answers
# through Redis), $load->wait_settled($t) (every request sent before $t is
# answered).
#
# fresh => 'prefix' adds a kind "fresh": a new unknown token for every
# request, so each one reaches Postgres (never cached, never negative).
# Token kinds are free; unexpected() knows valid (200) and invalid (401),
# others need their statuses named.
#
# The load is bounded: `rate` requests a second (200), sent whether or not
# earlier ones were answered (an open loop, as real clients), at most
# `max_inflight` (64) unanswered, and at most `max_seconds` (60) in all.

use v5.36;
use Exporter qw(import);
use File::Temp qw(tempfile);
use POSIX ();
use Time::HiRes qw(time sleep);

use IO::Select;

use SessionCache::Test ();

our @EXPORT = qw(start_load unexpected summarize first_time);

sub start_load (%o) {
    my %tokens = %{ $o{tokens} // {} };
    $tokens{fresh} = [ ($o{fresh}) x 4 ] if defined $o{fresh};
    my @kinds = sort keys %tokens;
    die "start_load: no tokens\n" unless grep { @{ $tokens{$_} } } @kinds;
    # interleave kinds so every stretch of the load holds some of each
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

    my $rate  = $o{rate} // 200;          # requests per second
    my $limit = $o{max_inflight} // 64;
    my $max   = $o{max_seconds} // 60;
    my $port  = $o{port};
    my $path  = $o{path} // '/';

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $stop = 0;
        $SIG{TERM} = sub { $stop = 1 };
        open my $out, '>', $file or POSIX::_exit(2);
        $out->autoflush(1);
        # one line per answer, as it comes (see _read); "S n t0" when
        # request n is sent
        my $record = sub ($p) {
            my $r = SessionCache::Test::_response($p);
            printf $out "%.6f %.6f %s %d %s %d\n", $r->{t0}, $r->{t1},
                $p->{kind}, $r->{status},
                $r->{headers}{'x-session-status'} // '-', $p->{n};
        };
        my %active;
        my $sel = IO::Select->new;
        my $close = sub ($p, $error = undef) {
            $p->{t1} = time;
            $p->{error} = $error if $error;
            $sel->remove($p->{sock});
            delete $active{"$p->{sock}"};
            close $p->{sock};
            $record->($p);
        };
        my $n = 0;
        my $until = time + $max;
        my $next = time;
        # Open loop: requests go out at a steady rate whether or not the
        # earlier ones were answered, as real clients do.
        while ((!$stop && time < $until) || %active) {
            my $now = time;
            while (!$stop && $now >= $next && keys %active < $limit) {
                my ($kind, $tok) = @{ $mixed[$n % @mixed] };
                $n++;
                $tok .= "-$$-$n" if $kind eq 'fresh';
                my %opt = (timeout => 10);
                $opt{port} = $port if $port;
                my $p = $kind eq 'public'
                    ? SessionCache::Test::_send($o{public}, %opt)
                    : SessionCache::Test::_send($path, %opt,
                                                cookie => "session=$tok");
                $p->{kind} = $kind;
                $p->{n} = $n;
                printf $out "S %d %.6f\n", $n, $p->{t0};
                if ($p->{sock}) {
                    $active{"$p->{sock}"} = $p;
                    $sel->add($p->{sock});
                } else {
                    $p->{t1} = time;
                    $record->($p);
                }
                $next += 1 / $rate;
            }
            $next = $now if $now - $next > 1;    # at the in-flight limit
            for my $p (values %active) {
                $close->($p, 'timed out') if $p->{t0} + 10 <= $now;
            }
            my $wait = $next - time;
            $wait = 0.05 if $wait > 0.05 || $stop;
            for my $sock ($sel->can_read($wait > 0 ? $wait : 0)) {
                my $p = $active{"$sock"} or next;
                my $got = sysread $sock, my $buf, 65536;
                if (!defined $got) {
                    next if $!{EAGAIN} || $!{EINTR};
                    $close->($p, "read: $!");
                } elsif ($got == 0) {
                    $close->($p);
                } else {
                    $p->{buf} .= $buf;
                }
            }
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
    return sort { $a->{n} <=> $b->{n} } $self->answers;
}

# The record so far, read while the load runs: (answers, {n => t0} of the
# requests sent and not answered yet, the t0 of the last one sent).
sub _read ($self) {
    open my $in, '<', $self->{file} or die "load record: $!";
    my (@r, %open);
    my $last_sent = 0;
    while (my $line = <$in>) {
        next unless $line =~ /\n\z/;    # the line being written
        my @f = split ' ', $line;
        if ($f[0] eq 'S') {
            $open{ $f[1] } = $last_sent = $f[2];
            next;
        }
        my ($t0, $t1, $kind, $status, $ss, $n) = @f;
        delete $open{$n};
        push @r, { t0 => $t0, t1 => $t1, ms => ($t1 - $t0) * 1000,
                   kind => $kind, status => $status, sstatus => $ss,
                   n => $n };
    }
    return (\@r, \%open, $last_sent);
}

# Every answer so far, in the order they came.
sub answers ($self) { @{ ($self->_read)[0] } }

# Wait until at least $n answers satisfy $pred (all answers count without
# one); those answers, or () after a diagnostic. $what names them.
sub wait_for ($self, $n, $pred = undef, $what = "$n answers",
              $timeout = 30) {
    my @got;
    SessionCache::Test::wait_until(sub {
        @got = grep { !$pred || $pred->($_) } $self->answers;
        @got >= $n;
    }, $timeout, 0.05, "the load: $what") or return ();
    return @got;
}

# Wait until every request sent before $t has been answered: then any
# work a request in flight at $t did (a log line, a backend call) is done.
sub wait_settled ($self, $t, $timeout = 30) {
    # (requests go out one after another: once one sent at $t or later is
    # on record, so is every one sent before)
    return SessionCache::Test::wait_until(sub {
        my (undef, $open, $last_sent) = $self->_read;
        $last_sent >= $t && !grep { $_ < $t } values %$open;
    }, $timeout, 0.05, 'every request sent before then to be answered');
}

# The answers that break the contract: a valid session not let through, an
# invalid one not refused, the unprotected page not served. %allow adds
# statuses that are acceptable in a scenario (e.g. valid => [503]).
sub unexpected ($recs, %allow) {
    my %ok = (valid => [200], invalid => [401], fresh => [401],
              public => [200]);
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
