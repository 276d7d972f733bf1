using Rbs.Agent.Execution;

namespace Rbs.Agent.Lifetime;

/// <summary>
/// SIGTERM (or idle exit) → interrupt every running command as a Ctrl-C would, and let their exit frames reach the
/// clients before the server goes away. Hooked on ApplicationStopping because that fires before Kestrel starts
/// draining connections; Kestrel then waits (up to HostOptions.ShutdownTimeout) for these calls to finish. Once no
/// command runs, the build tool's servers are shut down (<see cref="BuildToolServers"/>).
/// </summary>
internal sealed partial class GracefulShutdown(
    CommandTracker tracker,
    BuildToolServers servers,
    IHostApplicationLifetime lifetime,
    ILogger<GracefulShutdown> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStopping.Register(() =>
        {
            var interrupted = tracker.InterruptAll();
            Log.Stopping(logger, interrupted);
        });
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        try
        {
            await tracker.WhenIdleAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            // A shutdown would only wait behind the command still running ("Another command is running").
            Log.GaveUpWaiting(logger, tracker.RunningCount);
            return;
        }

        await servers.ShutdownAsync(cancellationToken);
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 10, Level = LogLevel.Information, Message = "Agent stopping: interrupted {Count} running command(s)")]
        public static partial void Stopping(ILogger logger, int count);

        [LoggerMessage(EventId = 11, Level = LogLevel.Error, Message = "Shutdown timeout reached with {Count} command(s) still running")]
        public static partial void GaveUpWaiting(ILogger logger, int count);
    }
}
