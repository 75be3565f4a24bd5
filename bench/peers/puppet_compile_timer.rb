# Loaded into `puppet apply` (ruby -r THIS /usr/bin/puppet apply --noop site.pp) by
# compile_peer.sh: times Puppet's catalog compile alone (Puppet::Parser::Compiler.compile,
# what `puppet apply` reports as "Compiled catalog ... in N seconds", without node and
# fact lookup, RAL conversion or the apply), PUPPET_COMPILE_RUNS times in one process,
# then exits before anything is applied. The first compile parses site.pp; later ones
# reuse the parsed environment (as a warm puppetserver does). Prints one line per compile:
#   puppet-compile run=K resources=R cpu_s=... wall_s=...
# R counts the File resources (the workload's objects; Puppet's catalog also holds
# Stage[main], Class[Settings] and Class[Main]); cpu_s is this thread's CPU time
# (CLOCK_THREAD_CPUTIME_ID, as the Troupe bench reads), after a full GC so one compile's
# garbage is not collected in the next one's time.
require 'puppet'
require 'puppet/parser/compiler'

module TroupeBenchCompileTimer
  def compile(node, code_id = nil)
    runs = Integer(ENV.fetch('PUPPET_COMPILE_RUNS', '5'))
    raise ArgumentError, 'PUPPET_COMPILE_RUNS must be at least 1' if runs < 1

    runs.times do |k|
      GC.start
      c0 = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
      w0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      cat = super
      c1 = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
      w1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      files = cat.resources.count { |r| r.type == 'File' }
      $stdout.puts format('puppet-compile run=%d resources=%d cpu_s=%.6f wall_s=%.6f',
                          k, files, c1 - c0, w1 - w0)
    end
    $stdout.flush
    # Stop here: nothing is converted, applied or written.
    exit!(0)
  end
end

Puppet::Parser::Compiler.singleton_class.prepend(TroupeBenchCompileTimer)
