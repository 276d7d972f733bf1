using Rbs.JBazel.Commands;
using Rbs.JBazel.Configuration;
using Rbs.JBazel.Terminal;

using var streams = StandardStreams.OpenProcessStreams();
return await new BazelCommand(CliEnvironment.FromProcess(), streams).InvokeAsync(args, CancellationToken.None);
