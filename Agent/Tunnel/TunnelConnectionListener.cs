using System.Net;
using System.Net.WebSockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;

namespace Rbs.Agent.Tunnel;

/// <summary>
/// Kestrel's listener in tunnel mode. <see cref="AgentTunnelOptions.SpareConnections"/> loops each keep one
/// idle WebSocket open to the gateway. A tunnel is handed to Kestrel (AcceptAsync) only once the gateway
/// sends its first bytes (the HTTP/2 preface), and the loop immediately dials a replacement spare — so the
/// agent learns a tunnel went into use without a separate control channel, and Kestrel never times out an
/// idle, never-used tunnel. Spares are also dialled ahead of demand: when a tunnel in use reaches 3/4 of its
/// stream limit, one extra spare is dialled (at most <see cref="AgentTunnelOptions.MaxExtraSpares"/> at a time),
/// so the gateway rarely waits for a dial when it needs another connection. Failures reconnect with capped exponential backoff and full jitter; a 4xx from
/// the gateway (bad or expired join token) is final.
/// </summary>
internal sealed partial class TunnelConnectionListener : IConnectionListener
{
    private static readonly TimeSpan s_stableConnection = TimeSpan.FromSeconds(5);

    private readonly TunnelEndPoint _endPoint;
    private readonly AgentTunnelOptions _options;
    private readonly AgentTunnelStatus _status;
    private readonly TimeProvider _timeProvider;
    private readonly ILogger _logger;
    private readonly Action _onRejected;
    private readonly Channel<ConnectionContext> _accepted = Channel.CreateUnbounded<ConnectionContext>();
    private readonly CancellationTokenSource _stop = new();
    private readonly HashSet<WebSocketTunnelStream> _live = [];
    private readonly List<Task> _extraLoops = [];
    private Task[] _loops = [];
    private int _extraSpares;
    private string? _renewedJoinToken;

    public TunnelConnectionListener(TunnelEndPoint endPoint, AgentTunnelOptions options, AgentTunnelStatus status, TimeProvider timeProvider, ILogger logger, Action onRejected)
    {
        _endPoint = endPoint;
        _options = options;
        _status = status;
        _timeProvider = timeProvider;
        _logger = logger;
        _onRejected = onRejected;
    }

    public EndPoint EndPoint => _endPoint;

    public void Start()
    {
        _status.Attach(this);
        _loops = [.. Enumerable.Range(0, Math.Max(1, _options.SpareConnections)).Select(_ => Task.Run(() => RunSpareLoopAsync(_stop.Token)))];
    }

    public async ValueTask<ConnectionContext?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            return await _accepted.Reader.ReadAsync(cancellationToken);
        }
        catch (ChannelClosedException)
        {
            return null;
        }
    }

    public async ValueTask UnbindAsync(CancellationToken cancellationToken = default)
    {
        if (!_stop.IsCancellationRequested)
        {
            await _stop.CancelAsync();
        }

        // Idle spares go now; tunnels Kestrel accepted are drained by Kestrel itself.
        Task[] extras;
        lock (_extraLoops)
        {
            extras = [.. _extraLoops];
        }

        await Task.WhenAll([.. _loops, .. extras]).WaitAsync(cancellationToken);
        _accepted.Writer.TryComplete();
    }

    public async ValueTask DisposeAsync()
    {
        await UnbindAsync();
        _stop.Dispose();
    }

    /// <summary>Cuts every tunnel (idle and in use) at once, as a network failure would.</summary>
    public void AbortAll()
    {
        WebSocketTunnelStream[] live;
        lock (_live)
        {
            live = [.. _live];
        }

        foreach (var stream in live)
        {
            stream.Abort();
        }
    }

    /// <summary>
    /// Keeps one spare open: dial, wait for the gateway's first bytes, hand the tunnel to Kestrel, repeat.
    /// An <paramref name="extra"/> spare (dialled ahead of demand) does this once and gives up on failure.
    /// </summary>
    private async Task RunSpareLoopAsync(CancellationToken stop, bool extra = false)
    {
        var failures = 0;
        while (!stop.IsCancellationRequested)
        {
            WebSocketTunnelStream stream;
            try
            {
                stream = await DialAsync(stop);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (TunnelRejectedException ex)
            {
                Reject(ex);
                return;
            }
            catch (Exception ex) when (extra)
            {
                Log.ExtraDialFailed(_logger, _endPoint.GatewayUri, ex.GetBaseException().Message);
                return;
            }
            catch (Exception ex)
            {
                failures++;
                var delay = Backoff(failures);
                Log.DialFailed(_logger, _endPoint.GatewayUri, failures, delay.TotalMilliseconds, ex.GetBaseException().Message);
                if (!await DelayAsync(delay, stop))
                {
                    return;
                }

                continue;
            }

            var connectedAt = _timeProvider.GetTimestamp();
            Track(stream, add: true);
            _status.TunnelOpened();
            int received;
            try
            {
                received = await stream.WaitForDataAsync().WaitAsync(stop);
            }
            catch (OperationCanceledException)
            {
                Track(stream, add: false);
                _status.TunnelClosed();
                await stream.DisposeAsync();
                return;
            }

            if (received > 0)
            {
                // The gateway started an HTTP/2 connection on this spare: hand it to Kestrel, dial a replacement.
                failures = 0;
                Log.TunnelInUse(_logger);
                _accepted.Writer.TryWrite(new TunnelConnection(stream, _endPoint, OnConnectionDisposed, OnTunnelBusy, BusyThreshold));
                if (extra)
                {
                    return;
                }

                continue;
            }

            // Closed while idle: the gateway stopped or evicted it, or keepalive found it dead.
            Track(stream, add: false);
            _status.TunnelClosed();
            await stream.DisposeAsync();
            if (extra)
            {
                return;
            }

            failures = _timeProvider.GetElapsedTime(connectedAt) > s_stableConnection ? 1 : failures + 1;
            var wait = Backoff(failures);
            Log.IdleTunnelClosed(_logger, wait.TotalMilliseconds);
            if (!await DelayAsync(wait, stop))
            {
                return;
            }
        }
    }

    private int BusyThreshold => Math.Max(1, _options.MaxStreamsPerTunnel * 3 / 4);

    /// <summary>A tunnel reached 3/4 of its stream limit: dial one more spare now, before the gateway needs it.</summary>
    private void OnTunnelBusy(TunnelConnection connection)
    {
        if (_stop.IsCancellationRequested || _options.MaxExtraSpares <= 0)
        {
            return;
        }

        if (Interlocked.Increment(ref _extraSpares) > _options.MaxExtraSpares)
        {
            Interlocked.Decrement(ref _extraSpares);
            return;
        }

        Log.DialingExtraSpare(_logger, connection.ActiveStreams);
        var stop = _stop.Token;
        lock (_extraLoops)
        {
            _extraLoops.RemoveAll(t => t.IsCompleted);
            _extraLoops.Add(Task.Run(async () =>
            {
                try
                {
                    await RunSpareLoopAsync(stop, extra: true);
                }
                finally
                {
                    Interlocked.Decrement(ref _extraSpares);
                }
            }, CancellationToken.None));
        }
    }

    private void OnConnectionDisposed(TunnelConnection connection)
    {
        Track(connection.Stream, add: false);
        _status.TunnelClosed();
    }

    private void Track(WebSocketTunnelStream stream, bool add)
    {
        lock (_live)
        {
            if (add)
            {
                _live.Add(stream);
            }
            else
            {
                _live.Remove(stream);
            }
        }
    }

    private async Task<WebSocketTunnelStream> DialAsync(CancellationToken stop)
    {
        var renewed = Volatile.Read(ref _renewedJoinToken);
        try
        {
            return await DialWithTokenAsync(renewed ?? ConfiguredJoinToken(), stop);
        }
        catch (TunnelRejectedException) when (renewed is not null)
        {
            // The gateway's renewed token can lapse during a long outage; the configured one may be newer (rotated secret).
            Interlocked.CompareExchange(ref _renewedJoinToken, null, renewed);
            return await DialWithTokenAsync(ConfiguredJoinToken(), stop);
        }
    }

    private async Task<WebSocketTunnelStream> DialWithTokenAsync(string token, CancellationToken stop)
    {
        var webSocket = new ClientWebSocket();
        webSocket.Options.CollectHttpResponseDetails = true;
        webSocket.Options.SetRequestHeader("Authorization", "Bearer " + token);
        webSocket.Options.KeepAliveInterval = _options.KeepAliveInterval;
        webSocket.Options.KeepAliveTimeout = _options.KeepAliveTimeout;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(_options.ConnectTimeout);
        try
        {
            await webSocket.ConnectAsync(_endPoint.GatewayUri, timeout.Token);
        }
        catch (WebSocketException) when (IsFinal(webSocket.HttpStatusCode))
        {
            var status = webSocket.HttpStatusCode;
            webSocket.Dispose();
            throw new TunnelRejectedException(status);
        }
        catch
        {
            webSocket.Dispose();
            throw;
        }

        if (webSocket.HttpResponseHeaders?.TryGetValue("rbs-join-token", out var renewed) == true && renewed.FirstOrDefault() is { Length: > 0 } fresh)
        {
            Volatile.Write(ref _renewedJoinToken, fresh);
        }

        webSocket.HttpResponseHeaders = null;
        return new WebSocketTunnelStream(webSocket);
    }

    private string ConfiguredJoinToken()
    {
        if (!string.IsNullOrWhiteSpace(_options.JoinTokenFile))
        {
            return File.ReadAllText(_options.JoinTokenFile).Trim();
        }

        return _options.JoinToken?.Trim() ?? "";
    }

    // 4xx is the gateway's final word on our credentials; 408/429 are worth retrying.
    private static bool IsFinal(HttpStatusCode status) =>
        (int)status is >= 400 and < 500 && status is not HttpStatusCode.RequestTimeout and not HttpStatusCode.TooManyRequests;

    private void Reject(TunnelRejectedException ex)
    {
        if (_status.Reject($"the gateway at {_endPoint.GatewayUri} rejected the join token (HTTP {(int)ex.StatusCode} {ex.StatusCode})"))
        {
            Log.Rejected(_logger, _endPoint.GatewayUri, (int)ex.StatusCode, ex.StatusCode.ToString());
            _stop.Cancel();
            _accepted.Writer.TryComplete();
            _onRejected();
        }
    }

    /// <summary>Full jitter: uniform in [0, min(cap, initial * 2^(n-1))].</summary>
    private TimeSpan Backoff(int failures)
    {
        var ceiling = _options.ReconnectInitialDelay.TotalMilliseconds * Math.Pow(2, Math.Min(failures - 1, 30));
        ceiling = Math.Min(ceiling, _options.ReconnectMaxDelay.TotalMilliseconds);
        return TimeSpan.FromMilliseconds(Random.Shared.NextDouble() * ceiling);
    }

    private async Task<bool> DelayAsync(TimeSpan delay, CancellationToken stop)
    {
        try
        {
            await Task.Delay(delay, _timeProvider, stop);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    private sealed class TunnelRejectedException(HttpStatusCode statusCode) : Exception($"HTTP {(int)statusCode}")
    {
        public HttpStatusCode StatusCode => statusCode;
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 300, Level = LogLevel.Warning, Message = "Tunnel dial to {Gateway} failed (attempt {Attempt}), retrying in {DelayMs:0} ms: {Reason}")]
        public static partial void DialFailed(ILogger logger, Uri gateway, int attempt, double delayMs, string reason);

        [LoggerMessage(EventId = 301, Level = LogLevel.Debug, Message = "A spare tunnel went into use; dialling a replacement")]
        public static partial void TunnelInUse(ILogger logger);

        [LoggerMessage(EventId = 302, Level = LogLevel.Information, Message = "An idle tunnel closed; redialling in {DelayMs:0} ms")]
        public static partial void IdleTunnelClosed(ILogger logger, double delayMs);

        [LoggerMessage(EventId = 304, Level = LogLevel.Information, Message = "A tunnel carries {Streams} streams (near its limit); dialling an extra spare ahead of demand")]
        public static partial void DialingExtraSpare(ILogger logger, int streams);

        [LoggerMessage(EventId = 305, Level = LogLevel.Warning, Message = "Extra spare dial to {Gateway} failed (not retried; the regular spares keep redialling): {Reason}")]
        public static partial void ExtraDialFailed(ILogger logger, Uri gateway, string reason);

        [LoggerMessage(EventId = 303, Level = LogLevel.Critical, Message = "The gateway at {Gateway} rejected this agent's join token (HTTP {Status} {Reason}). Not retrying: the token is invalid, expired or for another key; the orchestrator must mint a new one.")]
        public static partial void Rejected(ILogger logger, Uri gateway, int status, string reason);
    }
}

/// <summary>The tunnel's state, for the agent's wiring (readiness) and tests.</summary>
internal sealed class AgentTunnelStatus
{
    private readonly TaskCompletionSource _firstConnected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<string> _rejected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TunnelConnectionListener? _listener;
    private int _open;

    /// <summary>Completes when the first tunnel to the gateway is open (the agent is registered).</summary>
    public Task FirstConnected => _firstConnected.Task;

    /// <summary>Completes with the reason when the gateway rejected the join token (final).</summary>
    public Task<string> Rejected => _rejected.Task;

    /// <summary>Tunnels open now (idle spares plus those carrying HTTP/2 connections).</summary>
    public int OpenTunnels => Volatile.Read(ref _open);

    /// <summary>Cuts every tunnel as a network failure would (tests, emergency drain); the listener reconnects.</summary>
    public void AbortAllTunnels() => _listener?.AbortAll();

    internal void Attach(TunnelConnectionListener listener) => _listener = listener;

    internal void TunnelOpened()
    {
        Interlocked.Increment(ref _open);
        _firstConnected.TrySetResult();
    }

    internal void TunnelClosed() => Interlocked.Decrement(ref _open);

    internal bool Reject(string reason) => _rejected.TrySetResult(reason);
}
