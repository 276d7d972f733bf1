using Microsoft.Extensions.Options;
using Rbs.Agent.Hosting;

// rbs-agent: runs the configured build tool for ExecuteCommand streams. Flags and keys: Hosting/AgentOptions.cs.
try
{
    var app = AgentHost.Build(args);
    await app.RunAsync();
}
catch (OptionsValidationException ex)
{
    // One actionable line (which flag to fix) for the spawner's log instead of a stack trace.
    Console.Error.WriteLine($"rbs-agent: invalid configuration: {string.Join(" ", ex.Failures)}");
    return 2;
}

return Environment.ExitCode;
