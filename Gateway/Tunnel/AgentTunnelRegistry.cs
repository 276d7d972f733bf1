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
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _stopping;

    public AgentTunnelRegistry(IOptions<GatewayOptions> options, ILoggerFactory loggerFactory, TimeProvider timeProvider)
    {
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

            agent = _agents.GetOrAdd(agentId, id => new AgentTunnels(id, userId, _options.Value, _loggerFactory, _timeProvider));
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

/// <summary>What the internal registration API reports for one agent.</summary>
internal sealed record AgentTunnelSnapshot(string AgentId, string UserId, bool Online, int LiveTunnels, int IdleTunnels);

/// <summary>
/// One agent's tunnels and the HTTP/2 client that runs over them. Each inner HTTP/2 connection the handler
/// opens takes one idle tunnel (its ConnectCallback); the agent replaces a spare as soon as it sees the
/// HTTP/2 preface on it, so new connections rarely wait. A tunnel is handed to the HTTP/2 client only after
/// a round trip proved the agent end alive: the gateway sends the connection preface and waits for the
/// agent's SETTINGS frame. A tunnel that fails this probe (the agent's dial had timed out after the gateway
/// accepted the WebSocket, or the path went half-open) is dropped and the next one is tried, so no request
/// is ever queued on a dead tunnel.
/// </summary>
internal sealed partial class AgentTunnels : IDisposable
{
    /// <summary>
    /// An inner HTTP/2 connection with no stream for this long is closed, and its tunnel with it; the agent's next
    /// stream then takes a spare (and the agent dials a replacement).
    /// </summary>
    internal static readonly TimeSpan ConnectionIdleTimeout = TimeSpan.FromMinutes(1);

    // Newest first: an older idle tunnel is the likelier one to have died unnoticed (the stale-tunnel race).
    private readonly LinkedList<GatewayTunnel> _idle = new();
    private readonly SemaphoreSlim _idleCount = new(0);
    private readonly CancellationTokenSource _disposed = new();
    private readonly HashSet<GatewayTunnel> _all = [];
    private readonly GatewayOptions _options;
    private readonly TimeProvider _timeProvider;
    private readonly ILogger _logger;
    private readonly Lazy<HttpMessageInvoker> _invoker;

    public AgentTunnels(string agentId, string userId, GatewayOptions options, ILoggerFactory loggerFactory, TimeProvider timeProvider)
    {
        AgentId = agentId;
        UserId = userId;
        _options = options;
        _timeProvider = timeProvider;
        _logger = loggerFactory.CreateLogger<AgentTunnels>();
        _invoker = new Lazy<HttpMessageInvoker>(CreateInvoker, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    public string AgentId { get; }

    /// <summary>The owner, from the join token; session tokens must name the same user.</summary>
    public string UserId { get; }

    public int LiveCount
    {
        get
        {
            lock (_all)
            {
                return _all.Count;
            }
        }
    }

    public int IdleCount
    {
        get
        {
            lock (_all)
            {
                return _all.Count(t => t.IsIdle);
            }
        }
    }

    /// <summary>HTTP/2 client whose connections are this agent's tunnels.</summary>
    public HttpMessageInvoker Invoker => _invoker.Value;

    public AgentTunnelSnapshot ToSnapshot() => new(AgentId, UserId, LiveCount > 0, LiveCount, IdleCount);

    public GatewayTunnel Add(WebSocketTunnelStream stream)
    {
        var tunnel = new GatewayTunnel(this, stream);
        lock (_all)
        {
            _all.Add(tunnel);
            OfflineSince = null;
        }

        lock (_idle)
        {
            _idle.AddFirst(tunnel);
        }

        _idleCount.Release();
        _ = WatchIdleAsync(tunnel);
        return tunnel;
    }

    /// <summary>When the last tunnel closed (null while online).</summary>
    public DateTimeOffset? OfflineSince { get; private set; }

    /// <summary>Returns the number of live tunnels left.</summary>
    public int Remove(GatewayTunnel tunnel, DateTimeOffset now)
    {
        lock (_all)
        {
            _all.Remove(tunnel);
            if (_all.Count == 0)
            {
                OfflineSince = now;
            }

            return _all.Count;
        }
    }

    public void AbortAll()
    {
        GatewayTunnel[] all;
        lock (_all)
        {
            all = [.. _all];
        }

        foreach (var tunnel in all)
        {
            tunnel.Stream.Abort();
        }
    }

    public void Dispose()
    {
        _disposed.Cancel();
        if (_invoker.IsValueCreated)
        {
            _invoker.Value.Dispose();
        }
    }

    /// <summary>
    /// Takes an idle tunnel for a new inner HTTP/2 connection, skipping ones that died meanwhile or fail the
    /// liveness probe. Waits (bounded by the handler's ConnectTimeout, <see cref="GatewayOptions.TunnelAcquireTimeout"/>)
    /// while the agent dials more spares.
    /// </summary>
    private async ValueTask<Stream> AcquireAsync(CancellationToken cancellationToken)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _disposed.Token);
        try
        {
            while (true)
            {
                await _idleCount.WaitAsync(linked.Token);
                GatewayTunnel? tunnel;
                lock (_idle)
                {
                    tunnel = _idle.First?.Value;
                    if (tunnel is not null)
                    {
                        _idle.RemoveFirst();
                    }
                }

                // (A count without a tunnel belongs to one the idle watch already evicted.)
                if (tunnel is null
                    // A completed pending receive on an idle tunnel means it already closed: skip it even
                    // if the idle watch has not run yet.
                    || tunnel.Stream.WaitForDataAsync().IsCompleted
                    || !tunnel.TryClaim())
                {
                    continue;
                }

                if (await ProbeAsync(tunnel, linked.Token))
                {
                    Log.TunnelClaimed(_logger, AgentId);
                    return new PrefaceSentStream(tunnel.Stream);
                }
            }
        }
        catch (OperationCanceledException) when (!_disposed.IsCancellationRequested)
        {
            throw new HttpRequestException(HttpRequestError.ConnectionError,
                $"agent {AgentId} has no live idle tunnel to the gateway (waited up to {_options.TunnelAcquireTimeout.TotalSeconds:0.#} s)");
        }
        catch (OperationCanceledException)
        {
            throw new HttpRequestException(HttpRequestError.ConnectionError, $"agent {AgentId} is no longer connected to the gateway");
        }
    }

    /// <summary>
    /// Liveness round trip on a claimed tunnel: send the HTTP/2 connection preface and wait for the agent's
    /// SETTINGS frame (Kestrel answers a preface with SETTINGS). True when it came; otherwise the tunnel is
    /// aborted (it carries no request yet, so nothing is lost) and false is returned.
    /// </summary>
    private async Task<bool> ProbeAsync(GatewayTunnel tunnel, CancellationToken cancellationToken)
    {
        var stream = tunnel.Stream;
        string reason;
        try
        {
            using var timeout = new CancellationTokenSource(_options.TunnelProbeTimeout, _timeProvider);
            using var probe = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
            try
            {
                await stream.WriteAsync(PrefaceSentStream.Preface, probe.Token);
                var received = await stream.WaitForDataAsync().WaitAsync(probe.Token);
                if (received > 0 && IsSettingsFrameStart(stream.Buffered))
                {
                    return true;
                }

                reason = received == 0
                    ? "the tunnel closed"
                    : $"the agent did not answer with an HTTP/2 SETTINGS frame; it sent {Convert.ToHexString(stream.Buffered[..Math.Min(stream.Buffered.Length, 16)])}";
            }
            catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                reason = $"no HTTP/2 SETTINGS from the agent within {_options.TunnelProbeTimeout.TotalSeconds:0.#} s";
            }
            catch (IOException ex)
            {
                reason = ex.GetBaseException().Message;
            }
        }
        catch (OperationCanceledException)
        {
            // The caller gave up mid-probe: the preface is out, so the tunnel cannot go back to the idle list.
            stream.Abort();
            throw;
        }

        Log.TunnelProbeFailed(_logger, AgentId, reason);
        stream.Abort();
        return false;
    }

    /// <summary>An HTTP/2 frame header is 3 bytes length, 1 byte type (SETTINGS = 4); fewer bytes so far are accepted as alive.</summary>
    private static bool IsSettingsFrameStart(ReadOnlySpan<byte> buffered) => buffered.Length < 4 || buffered[3] == 0x4;

    /// <summary>
    /// Keeps a receive pending on an idle tunnel: the agent must not speak first, so completion means the
    /// tunnel closed, died (keepalive timeout) or broke protocol; in all cases it is evicted before a
    /// request could pick it (the stale-tunnel 502 race).
    /// </summary>
    private async Task WatchIdleAsync(GatewayTunnel tunnel)
    {
        var received = await tunnel.Stream.WaitForDataAsync();
        if (tunnel.TryMarkDead())
        {
            lock (_idle)
            {
                _idle.Remove(tunnel);
            }

            if (received > 0)
            {
                Log.IdleTunnelSpoke(_logger, AgentId);
            }

            tunnel.Stream.Abort();
        }
    }

    private HttpMessageInvoker CreateInvoker()
    {
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, cancellationToken) => await AcquireAsync(cancellationToken),
            ConnectTimeout = _options.TunnelAcquireTimeout,
            // One tunnel = one HTTP/2 connection (≤ the agent's max concurrent streams, 100 by default);
            // beyond that the handler opens another connection, i.e. takes another tunnel.
            EnableMultipleHttp2Connections = true,
            // Pings find half-dead tunnels in use; idle ones are watched by their pending receive.
            KeepAlivePingDelay = _options.TunnelKeepAliveInterval,
            KeepAlivePingTimeout = _options.TunnelKeepAliveTimeout,
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,
            // Per-stream buffering on the agent leg (see GatewayOptions.TunnelStreamMaxWindowSize for the cap).
            InitialHttp2StreamWindowSize = _options.TunnelStreamWindowSize,
            PooledConnectionIdleTimeout = ConnectionIdleTimeout,
            UseProxy = false,
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            UseCookies = false,
            ActivityHeadersPropagator = null,
        };
        return new HttpMessageInvoker(handler, disposeHandler: true);
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 110, Level = LogLevel.Debug, Message = "Agent {AgentId}: an idle tunnel now carries a new HTTP/2 connection")]
        public static partial void TunnelClaimed(ILogger logger, string agentId);

        [LoggerMessage(EventId = 112, Level = LogLevel.Warning, Message = "Agent {AgentId}: a claimed tunnel failed the liveness probe ({Reason}); dropped it, trying another")]
        public static partial void TunnelProbeFailed(ILogger logger, string agentId, string reason);

        [LoggerMessage(EventId = 111, Level = LogLevel.Warning, Message = "Agent {AgentId} sent data on an idle tunnel (protocol violation); closing it")]
        public static partial void IdleTunnelSpoke(ILogger logger, string agentId);
    }
}

/// <summary>One agent WebSocket on the gateway: idle until an inner HTTP/2 connection claims it.</summary>
internal sealed class GatewayTunnel(AgentTunnels agent, WebSocketTunnelStream stream)
{
    private const int Idle = 0;
    private const int Claimed = 1;
    private const int Dead = 2;
    private int _state;

    public AgentTunnels Agent => agent;

    public WebSocketTunnelStream Stream => stream;

    public bool IsIdle => Volatile.Read(ref _state) == Idle;

    public bool TryClaim() => Interlocked.CompareExchange(ref _state, Claimed, Idle) == Idle;

    public bool TryMarkDead() => Interlocked.CompareExchange(ref _state, Dead, Idle) == Idle;
}
