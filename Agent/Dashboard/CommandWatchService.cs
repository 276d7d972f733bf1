using Grpc.Core;
using Rbs.V1;

namespace Rbs.Agent.Dashboard;

/// <summary>
/// rbs.v1.CommandWatch: the gateway's dashboard subscribes here over the agent's tunnel (docs/dashboard.md). The
/// gateway's public endpoint never forwards this service, so only the gateway (and, on the direct listener, a caller
/// holding the access key) can call it.
/// </summary>
internal sealed partial class CommandWatchService(CommandLog log, ILogger<CommandWatchService> logger) : CommandWatch.CommandWatchBase
{
    public override async Task Watch(WatchCommandsRequest request, IServerStreamWriter<CommandWatchEvent> responseStream, ServerCallContext context)
    {
        using var watcher = log.Subscribe() ?? throw new RpcException(new Status(StatusCode.ResourceExhausted,
            $"this agent already has {CommandLog.MaxWatchers} dashboard watchers; close a dashboard page and try again"));
        Log.Subscribed(logger, context.Peer);
        var cancellationToken = context.CancellationToken;
        foreach (var e in watcher.Snapshot)
        {
            await responseStream.WriteAsync(e, cancellationToken);
        }

        await foreach (var e in watcher.Events.ReadAllAsync(cancellationToken))
        {
            await responseStream.WriteAsync(e, cancellationToken);
        }

        if (watcher.Overran)
        {
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"the watcher fell more than {CommandLog.WatcherCapacity} events behind; watch again for a fresh snapshot"));
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 190, Level = LogLevel.Debug, Message = "A dashboard watches this agent's commands ({Peer})")]
        public static partial void Subscribed(ILogger logger, string peer);
    }
}
