using System.Collections.Concurrent;
using System.Net;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Tokens;
using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Tunnel;

/// <summary>
/// Which agents are connected, and their tunnels. An agent is online while it has at least one live tunnel
/// (idle or carrying an inner HTTP/2 connection). Identities come only from validated join tokens.
/// An agent's entry (and its HTTP/2 client) outlives short outages: a request that raced a reconnect waits
/// for the new tunnels on the same entry instead of failing on a disposed one. Entries offline longer than
/// <see cref="OfflineRetention"/> are dropped.
/// </summary>
internal sealed partial class AgentTunnelRegistry : IDisposable
{
    /// <summary>How long an offline agent's entry is kept for it to come back.</summary>
    public static readonly TimeSpan OfflineRetention = TimeSpan.FromMinutes(2);

    private readonly ConcurrentDictionary<string, AgentTunnels> _agents = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();
    private readonly IOptions<GatewayOptions> _options;
    private readonly ILoggerFactory _loggerFactory;
    private readonly TimeProvider _timeProvider;
    private readonly ILogger _logger;
    private readonly ITimer _sweepTimer;
    private readonly TunnelMetrics? _metrics;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _stopping;

    public AgentTunnelRegistry(IOptions<GatewayOptions> options, ILoggerFactory loggerFactory, TimeProvider timeProvider, TunnelMetrics? metrics = null)
    {
        _metrics = metrics;
        _options = options;
        _loggerFactory = loggerFactory;
        _timeProvider = timeProvider;
        _logger = loggerFactory.CreateLogger<AgentTunnelRegistry>();
        _sweepTimer = timeProvider.CreateTimer(_ => SweepOffline(), null, OfflineRetention, OfflineRetention);
    }

    /// <summary>The agent's tunnels when it is online, else null.</summary>
    public AgentTunnels? FindOnline(string agentId) =>
        _agents.TryGetValue(agentId, out var agent) && agent.LiveCount > 0 ? agent : null;

    public IReadOnlyList<AgentTunnelSnapshot> Snapshot() =>
        [.. _agents.Values.Where(a => a.LiveCount > 0).Select(a => a.ToSnapshot())];

    /// <summary>False when the agent id is already online for another user (a second identity must not hijack it).</summary>
    public bool CanRegister(string agentId, string userId) =>
        !_agents.TryGetValue(agentId, out var existing) || existing.LiveCount == 0
        || RbsTokenService.FixedTimeEquals(existing.UserId, userId);

    /// <summary>Adds a freshly accepted tunnel as idle; null when the gateway is stopping or the id belongs to another user.</summary>
    public GatewayTunnel? Add(string agentId, string userId, WebSocketTunnelStream stream)
    {
        AgentTunnels agent;
        AgentTunnels? replaced = null;
        GatewayTunnel tunnel;
        TaskCompletionSource changed;
        lock (_lock)
        {
            if (_stopping || !CanRegister(agentId, userId))
            {
                return null;
            }

            if (_agents.TryGetValue(agentId, out var existing) && !RbsTokenService.FixedTimeEquals(existing.UserId, userId))
            {
                // Offline entry of another owner (CanRegister allowed it): start afresh, never share its client.
                _agents.TryRemove(agentId, out replaced);
            }

            agent = _agents.GetOrAdd(agentId, id => new AgentTunnels(id, userId, _options.Value, _loggerFactory, _timeProvider, _metrics));
            tunnel = agent.Add(stream);
            changed = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        replaced?.Dispose();
        changed.TrySetResult();
        Log.TunnelAdded(_logger, agentId, agent.LiveCount, agent.IdleCount);
        return tunnel;
    }

    public void Remove(GatewayTunnel tunnel)
    {
        var agent = tunnel.Agent;
        int live;
        lock (_lock)
        {
            live = agent.Remove(tunnel, _timeProvider.GetUtcNow());
        }

        Log.TunnelRemoved(_logger, agent.AgentId, live);
        if (live == 0)
        {
            Log.AgentOffline(_logger, agent.AgentId);
        }
    }

    /// <summary>Drops entries (and their HTTP/2 clients) of agents offline longer than <see cref="OfflineRetention"/>.</summary>
    internal void SweepOffline()
    {
        var cutoff = _timeProvider.GetUtcNow() - OfflineRetention;
        List<AgentTunnels> dropped = [];
        lock (_lock)
        {
            foreach (var agent in _agents.Values)
            {
                if (agent.LiveCount == 0 && agent.OfflineSince is { } since && since <= cutoff
                    && _agents.TryRemove(new KeyValuePair<string, AgentTunnels>(agent.AgentId, agent)))
                {
                    dropped.Add(agent);
                }
            }
        }

        foreach (var agent in dropped)
        {
            agent.Dispose();
        }
    }

    /// <summary>Waits until the agent is online (the orchestrator's GetServer; a stream for a re-registering agent), up to <paramref name="timeout"/>.</summary>
    public async Task<AgentTunnels?> WaitOnlineAsync(string agentId, TimeSpan timeout, TimeProvider timeProvider, CancellationToken cancellationToken)
    {
        using var timeoutCts = new CancellationTokenSource(timeout, timeProvider);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeoutCts.Token);
        while (true)
        {
            Task changed;
            lock (_lock)
            {
                changed = _changed.Task;
            }

            if (FindOnline(agentId) is { } agent)
            {
                return agent;
            }

            try
            {
                await changed.WaitAsync(cts.Token);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                return FindOnline(agentId);
            }
        }
    }

    /// <summary>True once the gateway takes no new tunnels (a draining replica, or stopping).</summary>
    public bool Stopping
    {
        get
        {
            lock (_lock)
            {
                return _stopping;
            }
        }
    }

    /// <summary>A draining replica: refuse new tunnels, keep the existing ones for the streams they carry.</summary>
    public void StopTakingTunnels()
    {
        lock (_lock)
        {
            _stopping = true;
        }
    }

    /// <summary>Gateway shutdown: refuse new tunnels and cut the existing ones so agents reconnect elsewhere at once.</summary>
    public void AbortAll()
    {
        lock (_lock)
        {
            _stopping = true;
        }

        foreach (var agent in _agents.Values)
        {
            agent.AbortAll();
        }
    }

    public void Dispose()
    {
        _sweepTimer.Dispose();
        AbortAll();
        foreach (var agent in _agents.Values)
        {
            agent.Dispose();
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "Tunnel added for agent {AgentId} ({Live} live, {Idle} idle)")]
        public static partial void TunnelAdded(ILogger logger, string agentId, int live, int idle);

        [LoggerMessage(EventId = 101, Level = LogLevel.Debug, Message = "Tunnel removed for agent {AgentId} ({Live} live)")]
        public static partial void TunnelRemoved(ILogger logger, string agentId, int live);

        [LoggerMessage(EventId = 102, Level = LogLevel.Information, Message = "Agent {AgentId} is offline: its last tunnel closed")]
        public static partial void AgentOffline(ILogger logger, string agentId);
    }
}

/// <summary>One agent's registration: what rbs.v1.GatewayRegistry reports for it (Registration/GatewayRegistryService.cs).</summary>
internal sealed record AgentTunnelSnapshot(string AgentId, string UserId, bool Online, int LiveTunnels, int IdleTunnels);
