using Microsoft.Extensions.Options;
using Rbs.Agent.Execution;

namespace Rbs.Agent.Hosting;

/// <summary>Start-up checks, so a misconfigured agent exits at once with a message naming the flag to fix.</summary>
internal sealed class AgentOptionsValidator : IValidateOptions<AgentOptions>
{
    public ValidateOptionsResult Validate(string? name, AgentOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.AgentId))
        {
            failures.Add("Agent:AgentId is required (--agent-id).");
        }

        if (string.IsNullOrWhiteSpace(options.Workspace))
        {
            failures.Add("Agent:Workspace is required (--workspace /absolute/path).");
        }
        else if (!Path.IsPathRooted(options.Workspace))
        {
            failures.Add($"Agent:Workspace '{options.Workspace}' must be an absolute path (--workspace).");
        }
        else if (!Directory.Exists(options.Workspace))
        {
            failures.Add($"Agent:Workspace '{options.Workspace}' does not exist or is not a directory (--workspace).");
        }

        if (BuildToolLocator.Resolve(options.BuildTool, Environment.GetEnvironmentVariable("PATH"), out var toolError) is null)
        {
            failures.Add(toolError + " (--build-tool)");
        }

        if (!ListenAddress.TryParse(options.Listen, out _, out _))
        {
            failures.Add($"Agent:Listen '{options.Listen}' must be host:port with an IP address or localhost, e.g. 127.0.0.1:0 (--listen).");
        }

        if (!string.IsNullOrWhiteSpace(options.AccessKeyFile) && !File.Exists(options.AccessKeyFile))
        {
            failures.Add($"Agent:AccessKeyFile '{options.AccessKeyFile}' does not exist (--access-key-file).");
        }

        if (options.IdleExitAfter < TimeSpan.Zero)
        {
            failures.Add("Agent:IdleExitAfter must not be negative; 00:00:00 disables idle exit (--idle-exit-after).");
        }

        if (options.InterruptGracePeriod < TimeSpan.Zero)
        {
            failures.Add("Agent:InterruptGracePeriod must not be negative (--interrupt-grace-period).");
        }

        if (options.TerminateGracePeriod < TimeSpan.Zero)
        {
            failures.Add("Agent:TerminateGracePeriod must not be negative.");
        }

        if (options.BuildToolShutdownTimeout < TimeSpan.Zero)
        {
            failures.Add("Agent:BuildToolShutdownTimeout must not be negative; 00:00:00 leaves the build tool's servers running (--build-tool-shutdown-timeout).");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
