using Microsoft.Extensions.Options;
using Rbs.Agent.Execution;
using Rbs.Agent.Hosting;

namespace Rbs.Agent.Lifetime;

/// <summary>
/// Backstop against leaked agents: when no command has run for <see cref="AgentOptions.IdleExitAfter"/>, the agent
/// stops itself (normally the orchestrator reaps it first; this covers an orchestrator that is gone).
/// </summary>
internal sealed partial class IdleExit(
    IOptions<AgentOptions> options,
    CommandTracker tracker,
    IHostApplicationLifetime lifetime,
    TimeProvider time,
    ILogger<IdleExit> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var idleAfter = options.Value.IdleExitAfter;
        if (idleAfter <= TimeSpan.Zero)
        {
            return;
        }

        while (!stoppingToken.IsCancellationRequested)
        {
            var idleFor = time.GetUtcNow() - tracker.LastActivity;
            if (tracker.RunningCount == 0 && idleFor >= idleAfter)
            {
                Log.IdleExit(logger, idleFor, idleAfter);
                lifetime.StopApplication();
                return;
            }

            // Sleep until the earliest moment the agent could be idle long enough; re-check then, since a command
            // may have started or ended meanwhile. A running command postpones the check by a full period.
            var wait = tracker.RunningCount > 0 ? idleAfter : idleAfter - idleFor;
            await Task.Delay(wait < TimeSpan.FromMilliseconds(10) ? TimeSpan.FromMilliseconds(10) : wait, time, stoppingToken)
                .ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    private static partial class Log
    {
        [LoggerMessage(EventId = 20, Level = LogLevel.Information, Message = "No command for {IdleFor} (Agent:IdleExitAfter = {IdleExitAfter}): stopping the agent")]
        public static partial void IdleExit(ILogger logger, TimeSpan idleFor, TimeSpan idleExitAfter);
    }
}
