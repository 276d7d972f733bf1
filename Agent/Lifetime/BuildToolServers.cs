using System.ComponentModel;
using Microsoft.Extensions.Options;
using Rbs.Agent.Execution;
using Rbs.Agent.Hosting;
using Rbs.Agent.Outputs;

namespace Rbs.Agent.Lifetime;

/// <summary>
/// The build tool's servers this agent started, shut down when the agent stops. bazel's server daemonizes into a
/// session of its own and would otherwise outlive a reaped agent by hours (bazel's own idle limit is 3 h), so a
/// graceful stop (SIGTERM from the orchestrator's reaper or StopAsync, Kubernetes, idle exit) runs
/// <c>&lt;build tool&gt; [startup options] shutdown</c> in the workspace, once for every distinct set of startup options
/// the agent's commands used (each <c>--output_base</c> or <c>--output_user_root</c> is its own server).
/// </summary>
internal sealed partial class BuildToolServers(IOptions<AgentOptions> options, ILogger<BuildToolServers> logger)
{
    /// <summary>Distinct startup-option sets remembered; the oldest is forgotten beyond this (a bound on client input).</summary>
    public const int MaxRecorded = 8;

    /// <summary>Output of one shutdown command kept for the log when it fails.</summary>
    private const int MaxCapturedBytes = 4096;

    private readonly Lock _lock = new();
    private readonly List<string[]> _startupOptions = [];

    /// <summary>The recorded startup-option sets, most recent last.</summary>
    public IReadOnlyList<IReadOnlyList<string>> StartupOptions
    {
        get
        {
            lock (_lock)
            {
                return [.. _startupOptions];
            }
        }
    }

    /// <summary>Remembers the startup options of a command (the arguments before bazel's command word).</summary>
    public void Record(IReadOnlyList<string> arguments)
    {
        var verb = OutputCollector.VerbIndex(arguments);
        if (verb < 0)
        {
            // Only startup options (e.g. `bazel --version`): the client exits without a server.
            return;
        }

        string[] startup = [.. arguments.Take(verb)];
        lock (_lock)
        {
            _startupOptions.RemoveAll(known => known.SequenceEqual(startup, StringComparer.Ordinal));
            _startupOptions.Add(startup);
            if (_startupOptions.Count > MaxRecorded)
            {
                _startupOptions.RemoveAt(0);
            }
        }
    }

    /// <summary>
    /// Runs the shutdowns one after the other within <see cref="AgentOptions.BuildToolShutdownTimeout"/>. A shutdown
    /// still running at the deadline is left to finish on its own (it is in its own process group and does not die
    /// with the agent), so the server still goes away even when whoever stops the agent kills it right after.
    /// </summary>
    public async Task ShutdownAsync(CancellationToken cancellationToken)
    {
        var budget = options.Value.BuildToolShutdownTimeout;
        var sets = StartupOptions;
        if (budget <= TimeSpan.Zero || sets.Count == 0)
        {
            return;
        }

        var toolPath = BuildToolLocator.Resolve(options.Value.BuildTool, Environment.GetEnvironmentVariable("PATH"), out _);
        if (toolPath is null)
        {
            return;
        }

        var workspace = Native.RealPath(options.Value.Workspace) ?? options.Value.Workspace;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(budget);
        foreach (var startup in sets.Reverse())
        {
            if (deadline.IsCancellationRequested)
            {
                Log.ShutdownSkipped(logger, string.Join(' ', startup), budget);
                continue;
            }

            await ShutdownOneAsync(toolPath, workspace, startup, budget, deadline.Token);
        }
    }

    private async Task ShutdownOneAsync(string toolPath, string workspace, IReadOnlyList<string> startup, TimeSpan budget, CancellationToken deadline)
    {
        var description = string.Join(' ', [options.Value.BuildTool, .. startup, "shutdown"]);
        var launch = new ToolStartInfo(toolPath, options.Value.BuildTool, [.. startup, "shutdown"], workspace, ToolEnvironment.Build(new Dictionary<string, string>(), null, []));
        ToolProcess process;
        try
        {
            process = await ToolProcess.StartAsync(launch);
        }
        catch (Win32Exception ex)
        {
            Log.ShutdownFailedToStart(logger, description, ex.Message);
            return;
        }

        using (process)
        {
            process.StandardInput?.Dispose();
            var stdout = CaptureAsync(process.StandardOutput);
            var stderr = CaptureAsync(process.StandardError);
            Log.ShuttingDown(logger, description, process.Pid);
            try
            {
                var exit = await process.Exited.WaitAsync(deadline);
                var output = (await stderr + await stdout).Trim();
                if (exit.Code == 0)
                {
                    Log.ShutDown(logger, description);
                }
                else
                {
                    Log.ShutdownFailed(logger, description, exit.Code, output);
                }
            }
            catch (OperationCanceledException)
            {
                Log.ShutdownStillRunning(logger, description, process.Pid, budget);
            }
        }
    }

    private static async Task<string> CaptureAsync(Stream? pipe)
    {
        if (pipe is null)
        {
            return "";
        }

        var kept = new byte[MaxCapturedBytes];
        var length = 0;
        var buffer = new byte[16 * 1024];
        try
        {
            int read;
            while ((read = await pipe.ReadAsync(buffer)) > 0)
            {
                // Keep the last bytes: bazel's error, if any, comes at the end.
                var take = Math.Min(read, MaxCapturedBytes);
                var keep = Math.Min(length, MaxCapturedBytes - take);
                Buffer.BlockCopy(kept, length - keep, kept, 0, keep);
                Buffer.BlockCopy(buffer, read - take, kept, keep, take);
                length = keep + take;
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException)
        {
        }

        return System.Text.Encoding.UTF8.GetString(kept, 0, length);
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 30, Level = LogLevel.Information, Message = "Shutting down the build tool's server: {Command} (pid {Pid})")]
        public static partial void ShuttingDown(ILogger logger, string command, int pid);

        [LoggerMessage(EventId = 31, Level = LogLevel.Information, Message = "Build tool server shut down: {Command}")]
        public static partial void ShutDown(ILogger logger, string command);

        [LoggerMessage(EventId = 32, Level = LogLevel.Warning, Message = "{Command} exited with {ExitCode}: {Output}")]
        public static partial void ShutdownFailed(ILogger logger, string command, int exitCode, string output);

        [LoggerMessage(EventId = 33, Level = LogLevel.Warning, Message = "{Command} (pid {Pid}) still running after Agent:BuildToolShutdownTimeout ({Timeout}); the agent exits and leaves it to finish")]
        public static partial void ShutdownStillRunning(ILogger logger, string command, int pid, TimeSpan timeout);

        [LoggerMessage(EventId = 34, Level = LogLevel.Warning, Message = "Could not start {Command}: {Message}")]
        public static partial void ShutdownFailedToStart(ILogger logger, string command, string message);

        [LoggerMessage(EventId = 35, Level = LogLevel.Warning, Message = "Agent:BuildToolShutdownTimeout ({Timeout}) used up: not running '{StartupOptions} shutdown'")]
        public static partial void ShutdownSkipped(ILogger logger, string startupOptions, TimeSpan timeout);
    }
}
