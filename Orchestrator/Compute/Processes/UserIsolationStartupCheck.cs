using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;

namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>
/// Before anything else starts (agent adoption included): says whether users are isolated and why, and with isolation
/// checks that agents under other uids can reach what they need, so a path they cannot use stops the orchestrator at
/// start-up with the fix instead of failing every allocation later.
/// </summary>
internal sealed partial class UserIsolationStartupCheck(
    IServiceProvider services,
    UserIsolation isolation,
    IOptions<OrchestratorOptions> options,
    ILogger<UserIsolationStartupCheck> logger) : IHostedLifecycleService
{
    public Task StartingAsync(CancellationToken cancellationToken)
    {
        if (options.Value.GetBackend() != OrchestratorOptions.ProcessBackend)
        {
            return Task.CompletedTask;
        }

        if (isolation.Active)
        {
            if (services.GetRequiredKeyedService<IComputeService>(ProcessComputeService.BackendName) is ProcessComputeService process)
            {
                process.CheckIsolationPrerequisites();
            }

            Log.Isolated(logger, isolation.Explanation, isolation.MapPath);
        }
        else if (isolation.SingleUser)
        {
            Log.SingleUser(logger, isolation.Explanation, isolation.MapPath);
        }

        return Task.CompletedTask;
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(EventId = 113, Level = LogLevel.Information, Message = "User isolation on ({Reason}): each user's agents run under their own uid (assignments in {MapPath})")]
        public static partial void Isolated(ILogger logger, string reason, string mapPath);

        [LoggerMessage(EventId = 114, Level = LogLevel.Warning, Message = "User isolation off although several users have API keys ({Reason}): only the first user served will be served (recorded in {MapPath}); run as root to isolate users")]
        public static partial void SingleUser(ILogger logger, string reason, string mapPath);
    }
}
