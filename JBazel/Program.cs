using Rbs.JBazel.Commands;
using Rbs.JBazel.Configuration;
using Rbs.JBazel.Diagnostics;
using Rbs.JBazel.Remote;
using Rbs.JBazel.Terminal;

ReceiveBufferPool.Reserve();
PhaseTrace.Mark("main");
int exitCode;
using (var streams = StandardStreams.OpenProcessStreams())
{
    exitCode = await new BazelCommand(CliEnvironment.FromProcess(), streams).InvokeAsync(RawArguments.FromProcess(args), CancellationToken.None);
}

PhaseTrace.Mark("exit");
PhaseTrace.Write();
return exitCode;
