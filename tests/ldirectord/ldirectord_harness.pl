#!/usr/bin/perl
# Differential-test driver: loads the installed ldirectord's own read_config (without running
# the daemon) and reports its verdict on each configuration file named on stdin, one JSON line
# per file. Host names are resolved numerically only, so the comparison never touches DNS.
use strict;
use warnings;
no warnings "once";
use JSON::PP;

my $program = $ENV{LDIRECTORD} // '/usr/sbin/ldirectord';
open(my $fh, '<', $program) or die "cannot read $program: $!";
my $src = do { local $/; <$fh> };
close($fh);
$src =~ s/^# command line options\n.*?^# functions\n/our \$opt_d = 1; our \$opt_h = ''; our \$opt_v = '';\n/ms
    or die "cannot find the main code in $program";
$src =~ s/^#!.*\n//;
{
    no strict; no warnings;
    local $SIG{__WARN__} = sub {};
    eval "package main; $src; 1" or die "loading $program: $@";
}

{
    no warnings 'redefine';
    no strict 'refs';
    *{'main::config_error'} = sub { my ($line, $msg) = @_; chomp $msg; die { line => $line, msg => $msg }; };
    *{'main::config_warn'} = sub { };
    *{'main::ld_openlog'} = sub { return 0; };
    *{'main::ld_gethostbyname'} = sub {
        my ($name, $af) = @_;
        if ($name =~ /\[(.*)\]/) { $name = $1; }
        my @host = Socket6::getaddrinfo($name, 0, $af, 0, 0, Socket::AI_NUMERICHOST());
        return undef if !defined($host[3]);
        my @ret = Socket6::getnameinfo($host[3], Socket6::NI_NUMERICHOST() | Socket6::NI_NUMERICSERV());
        return $host[0] == Socket6::AF_INET6() ? "[$ret[0]]" : $ret[0];
    };
}

$main::DAEMON_STATUS = $main::DAEMON_STATUS_RUNNING;
$main::HOSTNAME = "localhost";
my $json = JSON::PP->new->canonical->allow_nonref->ascii;
$| = 1;
while (my $path = <STDIN>) {
    chomp $path;
    $main::CONFIG = $path;
    my $result;
    my $ok = eval { local $SIG{__WARN__} = sub {}; main::read_config(); 1 };
    if ($ok) {
        my $reals = 0;
        $reals += scalar(@{ $_->{real} }) for @main::VIRTUAL;
        $result = { status => "ok", virtuals => scalar(@main::VIRTUAL), reals => $reals };
    } elsif (ref($@) eq 'HASH') {
        $result = { status => "error", line => $@->{line}, msg => $@->{msg} };
    } else {
        my $err = "$@";
        $result = { status => "crash", msg => $err };
    }
    print $json->encode($result), "\n";
}
