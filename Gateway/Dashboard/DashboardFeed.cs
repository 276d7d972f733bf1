using System.Net;
using System.Text;
using System.Threading.Channels;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Gateway.Tunnel;
using Rbs.Shared.Tokens;
using Rbs.V1;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// One page's live feed for one signed-in user: the user's agents (the orchestrator's records, refreshed every
/// <see cref="RefreshInterval"/>, and this gateway's tunnels) and, for each of them with a tunnel here, the agent's
/// rbs.v1.CommandWatch stream opened through that tunnel. An agent is watched only when the orchestrator lists it for
/// the user and its tunnels were joined with that user's token: a page never sees another user's agent.
/// Everything to the page goes through one bounded channel (<see cref="Capacity"/>): output that does not fit is
/// counted and shown as a gap marker; a start, end or agent list that does not fit restarts the watches once the page
/// caught up (each begins with a reset and a fresh snapshot), so a slow browser never grows the gateway's memory.
/// </summary>
internal sealed partial class DashboardFeed(
    string userId,
    DashboardDirectoryClient directory,
    AgentTunnelRegistry registry,
    TimeProvider time,
    ILogger logger)
{
    public const int Capacity = 512;

    public static readonly TimeSpan RefreshInterval = TimeSpan.FromSeconds(2);

    private static readonly TimeSpan s_watchRetryDelay = TimeSpan.FromSeconds(1);

    private readonly Channel<DashboardMessage> _out = Channel.CreateBounded<DashboardMessage>(
        new BoundedChannelOptions(Capacity) { SingleReader = true, SingleWriter = false, FullMode = BoundedChannelFullMode.Wait });

    private readonly Channel<bool> _wake = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly Lock _lock = new();
    private readonly Dictionary<string, CancellationTokenSource> _watches = new(StringComparer.Ordinal);
    private readonly Dictionary<string, AgentActivity> _activity = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _lost = new(StringComparer.Ordinal);
    private volatile bool _resync;

    public ChannelReader<DashboardMessage> Reader => _out.Reader;

    /// <summary>Runs until the page goes (<paramref name="cancellationToken"/>); then the stream completes.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        try
        {
            _out.Writer.TryWrite(new DashboardMessage("hello") { User = userId });
            IReadOnlyList<AgentView>? sent = null;
            while (!cancellationToken.IsCancellationRequested)
            {
                var agents = await RefreshAsync(cancellationToken);
                if (agents is not null && (sent is null || !sent.SequenceEqual(agents)) && TrySendControl(new DashboardMessage("agents") { Agents = agents }))
                {
                    sent = agents;
                }

                using var timeout = new CancellationTokenSource(RefreshInterval, time);
                using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
                try
                {
                    await _wake.Reader.ReadAsync(linked.Token);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                }

                if (_resync && _out.Reader.Count < Capacity / 2)
                {
                    _resync = false;
                    sent = null;
                    StopWatches();
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        finally
        {
            StopWatches();
            _out.Writer.TryComplete();
        }
    }

    /// <summary>The user's agents now, watches started for those with tunnels here; null when the orchestrator could not be asked.</summary>
    private async Task<IReadOnlyList<AgentView>?> RefreshAsync(CancellationToken cancellationToken)
    {
        IReadOnlyList<DashboardAgent> records;
        try
        {
            records = await directory.ListAgentsAsync(userId, cancellationToken);
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            Log.ListFailed(logger, userId, e.StatusCode, e.Status.Detail);
            TrySendControl(new DashboardMessage("error") { Message = $"the orchestrator at {directory.Address} did not answer ({e.StatusCode}): the agent list is not current" });
            return null;
        }

        var views = new List<AgentView>(records.Count);
        var watched = new HashSet<string>(StringComparer.Ordinal);
        foreach (var record in records)
        {
            // Both must agree: the orchestrator's owner and the owner in the tunnels' join token.
            var tunnels = registry.FindOnline(record.AgentId);
            var ours = tunnels is not null && RbsTokenService.FixedTimeEquals(tunnels.UserId, userId);
            AgentActivity? activity;
            lock (_lock)
            {
                _activity.TryGetValue(record.AgentId, out activity);
            }

            views.Add(new AgentView(
                record.AgentId, record.RepoHash, record.SourcePath, record.Backend, record.BackendRef, record.State, record.LastUsedUnixMillis,
                ours, ours ? tunnels!.LiveCount : 0, ours ? tunnels!.IdleCount : 0,
                activity is null ? null : activity.CommandsFinished > 0, activity?.RunningCommands, activity?.LastActivityUnixMillis));
            if (ours)
            {
                watched.Add(record.AgentId);
                EnsureWatch(record.AgentId, cancellationToken);
            }
        }

        lock (_lock)
        {
            foreach (var gone in _watches.Keys.Where(id => !watched.Contains(id)).ToList())
            {
                _watches.Remove(gone, out var cts);
                cts!.Cancel();
                cts.Dispose();
                _activity.Remove(gone);
            }
        }

        return views;
    }

    private void EnsureWatch(string agentId, CancellationToken cancellationToken)
    {
        CancellationTokenSource cts;
        lock (_lock)
        {
            if (_watches.ContainsKey(agentId))
            {
                return;
            }

            cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            _watches[agentId] = cts;
        }

        _ = WatchAsync(agentId, cts.Token);
    }

    private void StopWatches()
    {
        lock (_lock)
        {
            foreach (var cts in _watches.Values)
            {
                cts.Cancel();
                cts.Dispose();
            }

            _watches.Clear();
            _activity.Clear();
            _lost.Clear();
        }
    }

    /// <summary>
    /// The agent's CommandWatch through its tunnels, again after a failure while the agent is watched. Each attempt looks
    /// the tunnels up afresh and checks their owner again: an entry replaced meanwhile is never used.
    /// </summary>
    private async Task WatchAsync(string agentId, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                if (registry.FindOnline(agentId) is not { } tunnels || !RbsTokenService.FixedTimeEquals(tunnels.UserId, userId))
                {
                    throw new RpcException(new Status(StatusCode.Unavailable, "the agent has no tunnel of this user to this gateway now"));
                }

                using var channel = GrpcChannel.ForAddress("http://agent.rbs-tunnel", new GrpcChannelOptions
                {
                    HttpHandler = new TunnelHandler(tunnels.Invoker),
                    HttpVersion = HttpVersion.Version20,
                    HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact,
                });
                var client = new CommandWatch.CommandWatchClient(channel);
                using var call = client.Watch(new WatchCommandsRequest(), cancellationToken: cancellationToken);
                if (!TrySendControl(new DashboardMessage("reset") { AgentId = agentId }))
                {
                    return;
                }

                var decoders = new Dictionary<(string, bool), Decoder>();
                await foreach (var e in call.ResponseStream.ReadAllAsync(cancellationToken))
                {
                    if (!Forward(agentId, e, decoders))
                    {
                        return;
                    }
                }
            }
            catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
            {
                Log.WatchFailed(logger, agentId, e.StatusCode, e.Status.Detail);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }

            try
            {
                await Task.Delay(s_watchRetryDelay, time, cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>False when a control message did not fit (the watch stops; a resync restarts it).</summary>
    private bool Forward(string agentId, CommandWatchEvent e, Dictionary<(string, bool), Decoder> decoders)
    {
        switch (e.EventCase)
        {
            case CommandWatchEvent.EventOneofCase.Activity:
                lock (_lock)
                {
                    _activity[agentId] = e.Activity;
                }

                _wake.Writer.TryWrite(true);
                return true;
            case CommandWatchEvent.EventOneofCase.Command:
                var c = e.Command;
                return TrySendControl(new DashboardMessage("command")
                {
                    AgentId = agentId,
                    Command = new CommandView(c.InvocationId, [.. c.Args], c.StartedUnixMillis, c.Running, c.ExitCode, c.Signal, c.DurationMillis, c.Terminal),
                });
            case CommandWatchEvent.EventOneofCase.Output:
                var o = e.Output;
                if (!decoders.TryGetValue((o.InvocationId, o.Stdout), out var decoder))
                {
                    decoder = new UTF8Encoding(false, false).GetDecoder();
                    decoders[(o.InvocationId, o.Stdout)] = decoder;
                }

                var chars = new char[decoder.GetCharCount(o.Data.Span, flush: false)];
                decoder.GetChars(o.Data.Span, chars, flush: false);
                SendOutput(agentId, o.InvocationId, o.Stdout, new string(chars), o.Data.Length);
                return true;
            case CommandWatchEvent.EventOneofCase.Gap:
                SendOutputGap(agentId, e.Gap.InvocationId, e.Gap.Bytes);
                return true;
            default:
                return true;
        }
    }

    private bool TrySendControl(DashboardMessage message)
    {
        if (_out.Writer.TryWrite(message))
        {
            return true;
        }

        if (!_resync)
        {
            Log.PageBehind(logger, userId, Capacity);
        }

        _resync = true;
        _wake.Writer.TryWrite(true);
        return false;
    }

    private void SendOutput(string agentId, string invocationId, bool stdout, string text, int bytes)
    {
        lock (_lock)
        {
            if (_lost.TryGetValue(invocationId, out var lost))
            {
                if (!_out.Writer.TryWrite(new DashboardMessage("gap") { AgentId = agentId, InvocationId = invocationId, Bytes = lost }))
                {
                    _lost[invocationId] = lost + bytes;
                    return;
                }

                _lost.Remove(invocationId);
            }

            if (!_out.Writer.TryWrite(new DashboardMessage("output") { AgentId = agentId, InvocationId = invocationId, Stdout = stdout, Text = text }))
            {
                _lost[invocationId] = _lost.GetValueOrDefault(invocationId) + bytes;
            }
        }
    }

    private void SendOutputGap(string agentId, string invocationId, long bytes)
    {
        lock (_lock)
        {
            if (!_out.Writer.TryWrite(new DashboardMessage("gap") { AgentId = agentId, InvocationId = invocationId, Bytes = bytes }))
            {
                _lost[invocationId] = _lost.GetValueOrDefault(invocationId) + bytes;
            }
        }
    }

    /// <summary>gRPC over the agent's tunnels: the HTTP/2 client whose connections are its tunnels (<see cref="AgentTunnels.Invoker"/>).</summary>
    private sealed class TunnelHandler(HttpMessageInvoker invoker) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            invoker.SendAsync(request, cancellationToken);
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 170, Level = LogLevel.Warning, Message = "Dashboard of user {UserId}: the orchestrator did not list the agents ({Status}: {Detail})")]
        public static partial void ListFailed(ILogger logger, string userId, StatusCode status, string detail);

        [LoggerMessage(EventId = 171, Level = LogLevel.Information, Message = "Dashboard: watching agent {AgentId} failed ({Status}: {Detail}); watching again")]
        public static partial void WatchFailed(ILogger logger, string agentId, StatusCode status, string detail);

        [LoggerMessage(EventId = 172, Level = LogLevel.Information, Message = "Dashboard of user {UserId}: the page fell {Capacity} messages behind; output is dropped and its agents are watched afresh once it caught up")]
        public static partial void PageBehind(ILogger logger, string userId, int capacity);
    }
}
