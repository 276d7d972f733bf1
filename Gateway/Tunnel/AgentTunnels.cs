using System.Net;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Tunnel;

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

    private readonly TunnelPool _tunnels = new();
    private readonly CancellationTokenSource _disposed = new();
    private readonly GatewayOptions _options;
    private readonly TimeProvider _timeProvider;
    private readonly ILogger _logger;
    private readonly Lazy<HttpMessageInvoker> _invoker;
    private readonly TunnelMetrics? _metrics;

    public AgentTunnels(string agentId, string userId, GatewayOptions options, ILoggerFactory loggerFactory, TimeProvider timeProvider, TunnelMetrics? metrics = null)
    {
        _metrics = metrics;
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

    public int LiveCount => _tunnels.Counts.Live;

    public int IdleCount => _tunnels.Counts.Idle;

    /// <summary>HTTP/2 client whose connections are this agent's tunnels.</summary>
    public HttpMessageInvoker Invoker => _invoker.Value;

    public AgentTunnelSnapshot ToSnapshot()
    {
        var (live, idle) = _tunnels.Counts;
        return new(AgentId, UserId, live > 0, live, idle);
    }

    public GatewayTunnel Add(WebSocketTunnelStream stream)
    {
        var tunnel = new GatewayTunnel(this, stream);
        // The idle watch's receive starts before anyone can take the tunnel: the stream allows one receive at a time,
        // and whoever takes it (the probe, then the HTTP/2 connection) awaits this same pending receive.
        var pending = stream.WaitForDataAsync();
        _tunnels.Add(tunnel);
        OfflineSince = null;
        _ = WatchIdleAsync(tunnel, pending);
        return tunnel;
    }

    /// <summary>When the last tunnel closed (null while online). Written under the registry's lock.</summary>
    public DateTimeOffset? OfflineSince { get; private set; }

    /// <summary>Returns the number of live tunnels left.</summary>
    public int Remove(GatewayTunnel tunnel, DateTimeOffset now)
    {
        var live = _tunnels.Remove(tunnel);
        if (live == 0)
        {
            OfflineSince = now;
        }

        return live;
    }

    public void AbortAll()
    {
        foreach (var tunnel in _tunnels.Live())
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
                var tunnel = await _tunnels.TakeAsync(linked.Token);
                // A completed pending receive on an idle tunnel means it already closed: drop it even if the idle
                // watch has not run yet (it no longer can: the tunnel is out of the idle list).
                if (tunnel.Stream.WaitForDataAsync() is { IsCompleted: true } closed)
                {
                    Evict(tunnel, closed.Result);
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
        _metrics?.ProbeFailed();
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
    private async Task WatchIdleAsync(GatewayTunnel tunnel, Task<int> pending)
    {
        var received = await pending;
        if (_tunnels.TryEvictIdle(tunnel))
        {
            Evict(tunnel, received);
        }
    }

    /// <summary>Closes an idle tunnel that closed or spoke (<paramref name="received"/> bytes) before it carried anything.</summary>
    private void Evict(GatewayTunnel tunnel, int received)
    {
        if (received > 0)
        {
            Log.IdleTunnelSpoke(_logger, AgentId);
        }

        tunnel.Stream.Abort();
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
