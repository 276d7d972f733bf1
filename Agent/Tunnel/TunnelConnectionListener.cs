using System.Net;
using System.Net.WebSockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tunnel;

namespace Rbs.Agent.Tunnel;

/// <summary>
/// Kestrel's listener in tunnel mode. <see cref="AgentTunnelOptions.SpareConnections"/> loops each keep one
/// idle WebSocket open to the gateway. A tunnel is handed to Kestrel (AcceptAsync) only once the gateway
/// sends its first bytes (the HTTP/2 preface), and the loop immediately dials a replacement spare — so the
/// agent learns a tunnel went into use without a separate control channel, and Kestrel never times out an
/// idle, never-used tunnel. Spares are also dialled ahead of demand: when a tunnel in use reaches 3/4 of its
/// stream limit, one extra spare is dialled (at most <see cref="AgentTunnelOptions.MaxExtraSpares"/> at a time),
/// so the gateway rarely waits for a dial when it needs another connection.
/// <para>
/// Credentials: every dial uses the join token in <see cref="JoinCredentials"/> and stores the renewed one the
/// gateway returns. An idle agent dials nothing, so once its newest token has used up half its lifetime the
/// renewal loop rotates the oldest idle spare (dial a fresh one first, then close the old one), which keeps the
/// token fresh without new demand. Failures reconnect with capped exponential backoff and full jitter; a 4xx from
/// the gateway (credentials refused) is final: no more dials, while requests in flight run to their end.
/// </para>
/// <para>
/// Relay: a 101 that announces the replica's relay port (<c>rbs-gateway-relay-port</c>) also starts
/// <see cref="AgentTunnelOptions.RelaySpareConnections"/> raw relay tunnels for that group (<see cref="RelayTunnelDialer"/>),
/// which end with the group like its WebSocket spares.
/// </para>
/// </summary>
internal sealed partial class TunnelConnectionListener : IConnectionListener
{
    private static readonly TimeSpan s_stableConnection = TimeSpan.FromSeconds(5);

    /// <summary>How long a replica seen draining is ignored in the other replicas' (possibly older) answers.</summary>
    private static readonly TimeSpan s_drainedMemory = TimeSpan.FromSeconds(10);

    private readonly TunnelEndPoint _endPoint;
    private readonly AgentTunnelOptions _options;
    private readonly JoinCredentials _credentials;
    private readonly AgentTunnelStatus _status;
    private readonly TimeProvider _timeProvider;
    private readonly ILogger _logger;
    private readonly Action _onRejected;
    private readonly Channel<ConnectionContext> _accepted = Channel.CreateUnbounded<ConnectionContext>();
    private readonly CancellationTokenSource _stop = new();
    private readonly HashSet<WebSocketTunnelStream> _live = [];
    private readonly List<IdleSpare> _idle = [];
    private readonly List<Task> _extraLoops = [];
    private readonly Dictionary<string, SpareGroup> _groups = new(StringComparer.Ordinal);
    private readonly TaskCompletionSource _replicated = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<SpareGroup> _retiredGroups = [];
    private readonly RelayTunnelDialer _relay;
    private Task[] _loops = [];
    private int _extraSpares;

    public TunnelConnectionListener(TunnelEndPoint endPoint, AgentTunnelOptions options, JoinCredentials credentials, AgentTunnelStatus status, TimeProvider timeProvider, ILogger logger, ILogger socketsLogger, Action onRejected)
    {
        _endPoint = endPoint;
        _options = options;
        _credentials = credentials;
        _status = status;
        _timeProvider = timeProvider;
        _logger = logger;
        _onRejected = onRejected;
        _relay = new RelayTunnelDialer(options, credentials, status, timeProvider, logger, socketsLogger, connection => _accepted.Writer.TryWrite(connection));
    }

    public EndPoint EndPoint => _endPoint;

    public JoinCredentials Credentials => _credentials;

    /// <summary>A tunnel open this long had worked: its closing restarts the backoff (it is not one more failure in a row).</summary>
    internal static TimeSpan StableConnection => s_stableConnection;

    /// <summary>Completes when every dial loop has ended: after a final refusal, or once unbound.</summary>
    internal Task LoopsEnded
    {
        get
        {
            Task[] extras;
            lock (_extraLoops)
            {
                extras = [.. _extraLoops];
            }

            Task[] groups;
            lock (_groups)
            {
                groups = [.. _groups.Values.Concat(_retiredGroups).SelectMany(g => g.Loops.Concat(g.RelayLoops))];
            }

            return Task.WhenAll([.. _loops, .. extras, .. groups]);
        }
    }

    public void Start()
    {
        _status.Attach(this);
        lock (_groups)
        {
            StartGroup(SpareGroup.Configured, _endPoint.GatewayUri);
        }

        _loops =
        [
            Task.Run(() => RunRenewalLoopAsync(_stop.Token)),
            Task.Run(() => RunReplicaWatchAsync(_stop.Token)),
        ];
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
        await LoopsEnded.WaitAsync(cancellationToken);
        _accepted.Writer.TryComplete();
    }

    public async ValueTask DisposeAsync()
    {
        await UnbindAsync();
        lock (_groups)
        {
            foreach (var group in _groups.Values.Concat(_retiredGroups))
            {
                group.Dispose();
            }
        }

        _relay.Dispose();
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

        _relay.AbortAll();
    }

    /// <summary>
    /// Keeps one spare open: dial, wait for the gateway's first bytes, hand the tunnel to Kestrel, repeat.
    /// An <paramref name="extra"/> spare (dialled ahead of demand) does this once and gives up on failure.
    /// </summary>
    private async Task RunSpareLoopAsync(SpareGroup group, bool extra = false)
    {
        var stop = group.Stop;
        var gatewayUri = group.ConnectUri;
        var failures = 0;
        while (!stop.IsCancellationRequested)
        {
            WebSocketTunnelStream stream;
            try
            {
                stream = await DialAsync(group);
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
                Log.ExtraDialFailed(_logger, gatewayUri, ex.GetBaseException().Message);
                return;
            }
            catch (Exception ex)
            {
                failures++;
                var delay = Backoff(failures);
                Log.DialFailed(_logger, gatewayUri, failures, delay.TotalMilliseconds, ex.GetBaseException().Message);
                if (!await DelayAsync(delay, stop))
                {
                    return;
                }

                continue;
            }

            var spare = new IdleSpare(Opened(stream), _timeProvider.GetTimestamp());
            var outcome = await KeepIdleAsync(spare, group);
            if (outcome == SpareOutcome.Stopped)
            {
                await CloseAsync(spare.Stream);
                return;
            }

            if (outcome == SpareOutcome.InUse)
            {
                // The gateway started an HTTP/2 connection on this spare: hand it to Kestrel, dial a replacement.
                failures = 0;
                HandToKestrel(spare.Stream, group);
                if (extra)
                {
                    return;
                }

                continue;
            }

            // Closed while idle: the gateway stopped or evicted it, or keepalive found it dead.
            await CloseAsync(spare.Stream);
            if (extra)
            {
                return;
            }

            failures = _timeProvider.GetElapsedTime(spare.ConnectedAt) > s_stableConnection ? 1 : failures + 1;
            var wait = Backoff(failures);
            Log.IdleTunnelClosed(_logger, wait.TotalMilliseconds);
            if (!await DelayAsync(wait, stop))
            {
                return;
            }
        }
    }

    /// <summary>
    /// Waits while <paramref name="spare"/> is idle, until the gateway uses it (InUse), it closes (Closed) or the
    /// listener stops (Stopped). A rotation asked for meanwhile dials a fresh tunnel first, then retires the old one
    /// and goes on waiting on the fresh one; if that dial fails the old tunnel stays, so a rotation never costs a spare.
    /// </summary>
    private async Task<SpareOutcome> KeepIdleAsync(IdleSpare spare, SpareGroup group)
    {
        var stop = group.Stop;
        while (true)
        {
            var data = spare.Stream.WaitForDataAsync();
            SetIdle(spare, idle: true);
            try
            {
                await Task.WhenAny(data, spare.RotationRequested).WaitAsync(stop);
            }
            catch (OperationCanceledException)
            {
                SetIdle(spare, idle: false);
                spare.Leave();
                return SpareOutcome.Stopped;
            }

            SetIdle(spare, idle: false);
            if (data.IsCompleted)
            {
                spare.Leave();
                return data.Result > 0 ? SpareOutcome.InUse : SpareOutcome.Closed;
            }

            WebSocketTunnelStream fresh;
            try
            {
                fresh = await DialAsync(group);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                spare.Leave();
                return SpareOutcome.Stopped;
            }
            catch (TunnelRejectedException ex)
            {
                spare.Leave();
                Reject(ex);
                return SpareOutcome.Stopped;
            }
            catch (Exception ex)
            {
                // Keep the old tunnel: its token is still valid for the other half of its lifetime; the renewal loop retries.
                Log.RotationDialFailed(_logger, group.ConnectUri, ex.GetBaseException().Message);
                spare.RotationFinished(replacement: null, 0);
                continue;
            }

            var old = spare.Stream;
            spare.RotationFinished(Opened(fresh), _timeProvider.GetTimestamp());
            if (data.IsCompleted && data.Result > 0)
            {
                // The gateway claimed the old one while the fresh one was dialled: it goes into use, the fresh one stays.
                HandToKestrel(old, group);
            }
            else
            {
                // Still idle (or already closed): retire it. Should the gateway be claiming it this very moment, its
                // liveness probe sees the close and takes another tunnel; no request is lost.
                await CloseAsync(old);
            }

            Log.SpareRotated(_logger);
        }
    }

    /// <summary>
    /// Keeps the credentials fresh on an idle agent: when the newest token has used up half its lifetime, the oldest
    /// idle spare is rotated (its fresh dial brings a renewed token). Retried with backoff while no spare is idle or
    /// the dial fails.
    /// </summary>
    private async Task RunRenewalLoopAsync(CancellationToken stop)
    {
        var attempts = 0;
        while (!stop.IsCancellationRequested)
        {
            var changed = _credentials.Changed;
            var due = _credentials.RenewDue;
            var wait = due is { } at ? at - _timeProvider.GetUtcNow() : Timeout.InfiniteTimeSpan;
            if (due is null || wait > TimeSpan.Zero)
            {
                if (!await WaitForChangeAsync(changed, wait, stop))
                {
                    return;
                }

                continue;
            }

            if (OldestIdle() is { } spare)
            {
                Log.RenewingCredentials(_logger);
                try
                {
                    await spare.RequestRotation().WaitAsync(stop);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }

            if (_credentials.RenewDue is { } next && next > _timeProvider.GetUtcNow())
            {
                attempts = 0;
                continue;
            }

            attempts++;
            if (!await DelayAsync(Backoff(attempts), stop))
            {
                return;
            }
        }
    }

    /// <summary>False when the listener stopped; true when <paramref name="changed"/> completed or <paramref name="wait"/> passed.</summary>
    private async Task<bool> WaitForChangeAsync(Task changed, TimeSpan wait, CancellationToken stop)
    {
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(stop);
        try
        {
            await Task.WhenAny(changed, Task.Delay(wait, _timeProvider, cancel.Token)).WaitAsync(stop);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        finally
        {
            // Disposes the pending delay's timer.
            await cancel.CancelAsync();
        }
    }

    /// <summary>Starts <see cref="AgentTunnelOptions.SpareConnections"/> spare loops to <paramref name="connectUri"/>. Under the <see cref="_groups"/> lock.</summary>
    private void StartGroup(string replicaId, Uri connectUri)
    {
        var group = new SpareGroup(replicaId, connectUri, CancellationTokenSource.CreateLinkedTokenSource(_stop.Token));
        group.Loops = [.. Enumerable.Range(0, Math.Max(1, _options.SpareConnections)).Select(_ => Task.Run(() => RunSpareLoopAsync(group)))];
        _groups[replicaId] = group;
    }

    /// <summary>Ends a group's loops: its idle spares close, tunnels in use keep their streams. Under the <see cref="_groups"/> lock.</summary>
    private void StopGroup(SpareGroup group)
    {
        _groups.Remove(group.ReplicaId);
        // Kept (not disposed) until the listener is: an extra spare of the group may still be looking at its token.
        _retiredGroups.Add(group);
        group.Cancel();
    }

    /// <summary>
    /// Only once a 101 named a replica (<c>rbs-gateway-replica</c>): long-polls the live replica set
    /// (<see cref="GatewayReplicaList"/>) from a replica it knows, else from the configured address, and keeps one group
    /// of spares per replica — dialled at the replica's own agent address — adding groups for replicas that joined and
    /// ending those of replicas that left (drained, or their lease lapsed after a crash). With an empty set (or before
    /// the first answer) the spares go to the configured address, as with a single gateway.
    /// </summary>
    private async Task RunReplicaWatchAsync(CancellationToken stop)
    {
        try
        {
            await _replicated.Task.WaitAsync(stop);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        using var http = new HttpClient(new SocketsHttpHandler
        {
            UseProxy = false,
            ConnectTimeout = _options.ConnectTimeout,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        })
        {
            Timeout = GatewayReplicaList.MaxWait + _options.ConnectTimeout,
        };
        string? version = null;
        var failures = 0;
        var drained = new Dictionary<string, long>(StringComparer.Ordinal);
        IReadOnlyList<GatewayReplicaEntry>? applied = null;
        (string SourceId, IReadOnlyList<GatewayReplicaEntry> Replicas)? last = null;
        while (!stop.IsCancellationRequested)
        {
            var (sourceId, source) = WatchSource(failures);
            // A replica in the last answer that is ignored as draining is dialled again once its memory lapses, even
            // while the long poll waits for a change (up to GatewayReplicaList.MaxWait): a restarted replica is
            // repaired within seconds, not at the next change of the set.
            using var recheck = last is { } shown && UntilDrainedLapses(shown.Replicas, drained) is { } lapse
                ? new CancellationTokenSource(lapse, _timeProvider)
                : null;
            using var poll = recheck is null ? null : CancellationTokenSource.CreateLinkedTokenSource(stop, recheck.Token);
            try
            {
                var list = await GetReplicasAsync(http, source, version, poll?.Token ?? stop);
                version = list.Version;
                failures = 0;
                last = (sourceId, list.Replicas);
                Apply(WithoutDrained(list.Replicas, sourceId, drained), ref applied);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (OperationCanceledException) when (recheck?.IsCancellationRequested == true && last is { } previous)
            {
                Apply(WithoutDrained(previous.Replicas, previous.SourceId, drained), ref applied);
            }
            catch (Exception ex)
            {
                failures++;
                var delay = Backoff(failures);
                Log.ReplicaWatchFailed(_logger, source, delay.TotalMilliseconds, ex.GetBaseException().Message);
                if (!await DelayAsync(delay, stop))
                {
                    return;
                }
            }
        }
    }

    private void Apply(List<GatewayReplicaEntry> replicas, ref IReadOnlyList<GatewayReplicaEntry>? applied)
    {
        if (applied is null || !applied.SequenceEqual(replicas))
        {
            Log.ReplicaSet(_logger, replicas.Count, string.Join(", ", replicas.Select(r => $"{r.Id}={r.AgentAddress}")));
            Reconcile(replicas);
            applied = replicas;
        }
    }

    /// <summary>How long until the first replica of <paramref name="answer"/> that is ignored as draining may be dialled again; null when none is.</summary>
    private TimeSpan? UntilDrainedLapses(IReadOnlyList<GatewayReplicaEntry> answer, Dictionary<string, long> drained)
    {
        TimeSpan? first = null;
        foreach (var (id, since) in drained)
        {
            if (answer.Any(r => r.Id == id))
            {
                // Just past the memory, so that WithoutDrained lets the replica back in.
                var left = s_drainedMemory - _timeProvider.GetElapsedTime(since) + TimeSpan.FromMilliseconds(50);
                left = left > TimeSpan.Zero ? left : TimeSpan.FromMilliseconds(50);
                first = first is { } f && f < left ? f : left;
            }
        }

        return first;
    }

    /// <summary>Where to ask for the set: the replicas known, in turn after failures, then the configured address (id "").</summary>
    private (string ReplicaId, Uri ConnectUri) WatchSource(int failures)
    {
        List<(string, Uri)> sources;
        lock (_groups)
        {
            sources = [.. _groups.Values.Where(g => g.ReplicaId != SpareGroup.Configured).OrderBy(g => g.ReplicaId, StringComparer.Ordinal).Select(g => (g.ReplicaId, g.ConnectUri))];
        }

        sources.Add((SpareGroup.Configured, _endPoint.GatewayUri));
        return sources[failures % sources.Count];
    }

    /// <summary>
    /// The replicas to keep, given the answer of replica <paramref name="sourceId"/>. A replica that leaves out itself is
    /// draining; the others learn that only at their next heartbeat, so it is ignored (else the agent would dial it
    /// again in between) until another replica answers without it too, or <see cref="s_drainedMemory"/> has passed (a
    /// replica that restarted under the same id is dialled again).
    /// </summary>
    private List<GatewayReplicaEntry> WithoutDrained(IReadOnlyList<GatewayReplicaEntry> answer, string sourceId, Dictionary<string, long> drained)
    {
        if (sourceId != SpareGroup.Configured && answer.All(r => r.Id != sourceId))
        {
            drained[sourceId] = _timeProvider.GetTimestamp();
        }

        foreach (var (id, since) in drained.ToList())
        {
            if ((id != sourceId && answer.All(r => r.Id != id)) || _timeProvider.GetElapsedTime(since) > s_drainedMemory)
            {
                drained.Remove(id);
            }
        }

        return [.. answer.Where(r => !drained.ContainsKey(r.Id))];
    }

    private async Task<GatewayReplicaList> GetReplicasAsync(HttpClient http, Uri connectUri, string? version, CancellationToken stop)
    {
        var builder = new UriBuilder(connectUri)
        {
            Scheme = connectUri.Scheme == "wss" ? "https" : "http",
            Path = connectUri.AbsolutePath[..(connectUri.AbsolutePath.Length - "/tunnel/v1/connect".Length)] + GatewayReplicaList.Path,
            Query = version is null ? string.Empty : $"{GatewayReplicaList.VersionQuery}={Uri.EscapeDataString(version)}",
        };
        using var request = new HttpRequestMessage(HttpMethod.Get, builder.Uri);
        request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", _credentials.Token);
        using var response = await http.SendAsync(request, stop);
        response.EnsureSuccessStatusCode();
        return await System.Net.Http.Json.HttpContentJsonExtensions.ReadFromJsonAsync(response.Content, GatewayReplicaJson.Default.GatewayReplicaList, stop)
            ?? throw new InvalidDataException("empty replica set response");
    }

    /// <summary>One group of spares per replica in <paramref name="replicas"/>; the configured address's group only while the set is empty.</summary>
    private void Reconcile(IReadOnlyList<GatewayReplicaEntry> replicas)
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }

        lock (_groups)
        {
            var wanted = replicas.ToDictionary(r => r.Id, r => AgentTunnelOptions.ConnectUriOf(r.AgentAddress), StringComparer.Ordinal);
            foreach (var group in _groups.Values.ToList())
            {
                var keep = group.ReplicaId == SpareGroup.Configured
                    ? wanted.Count == 0
                    : wanted.TryGetValue(group.ReplicaId, out var uri) && uri == group.ConnectUri;
                if (!keep)
                {
                    Log.ReplicaDropped(_logger, group.ReplicaId, group.ConnectUri);
                    StopGroup(group);
                }
            }

            foreach (var (id, uri) in wanted)
            {
                if (!_groups.ContainsKey(id))
                {
                    Log.ReplicaAdded(_logger, id, uri);
                    StartGroup(id, uri);
                }
            }

            if (_groups.Count == 0)
            {
                StartGroup(SpareGroup.Configured, _endPoint.GatewayUri);
            }
        }
    }

    private int BusyThreshold => Math.Max(1, _options.MaxStreamsPerTunnel * 3 / 4);

    /// <summary>A tunnel reached 3/4 of its stream limit: dial one more spare now, before the gateway needs it.</summary>
    private void OnTunnelBusy(TunnelConnection connection, SpareGroup group)
    {
        if (group.Stop.IsCancellationRequested || _options.MaxExtraSpares <= 0)
        {
            return;
        }

        if (Interlocked.Increment(ref _extraSpares) > _options.MaxExtraSpares)
        {
            Interlocked.Decrement(ref _extraSpares);
            return;
        }

        Log.DialingExtraSpare(_logger, connection.ActiveStreams);
        lock (_extraLoops)
        {
            _extraLoops.RemoveAll(t => t.IsCompleted);
            _extraLoops.Add(Task.Run(async () =>
            {
                try
                {
                    await RunSpareLoopAsync(group, extra: true);
                }
                finally
                {
                    Interlocked.Decrement(ref _extraSpares);
                }
            }, CancellationToken.None));
        }
    }

    private void OnConnectionDisposed(WebSocketTunnelStream stream)
    {
        Track(stream, add: false);
        _status.TunnelClosed();
    }

    private WebSocketTunnelStream Opened(WebSocketTunnelStream stream)
    {
        Track(stream, add: true);
        _status.TunnelOpened();
        return stream;
    }

    private async Task CloseAsync(WebSocketTunnelStream stream)
    {
        Track(stream, add: false);
        _status.TunnelClosed();
        await stream.DisposeAsync();
    }

    private void HandToKestrel(WebSocketTunnelStream stream, SpareGroup group)
    {
        Log.TunnelInUse(_logger);
        _accepted.Writer.TryWrite(new TunnelConnection(stream, _endPoint, _ => OnConnectionDisposed(stream), connection => OnTunnelBusy(connection, group), BusyThreshold));
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

    private void SetIdle(IdleSpare spare, bool idle)
    {
        lock (_idle)
        {
            if (idle)
            {
                _idle.Add(spare);
            }
            else
            {
                _idle.Remove(spare);
            }
        }
    }

    private IdleSpare? OldestIdle()
    {
        lock (_idle)
        {
            return _idle.Count == 0 ? null : _idle.MinBy(s => s.ConnectedAt);
        }
    }

    /// <summary>
    /// One WebSocket connect of <paramref name="group"/> with the current token; the renewed token of the 101 replaces it
    /// for later dials, and the relay port it announces (or no longer announces) steers the group's relay tunnels.
    /// </summary>
    private async Task<WebSocketTunnelStream> DialAsync(SpareGroup group)
    {
        var gatewayUri = group.ConnectUri;
        var stop = group.Stop;
        var webSocket = new ClientWebSocket();
        webSocket.Options.CollectHttpResponseDetails = true;
        webSocket.Options.SetRequestHeader("Authorization", "Bearer " + _credentials.Token);
        webSocket.Options.KeepAliveInterval = _options.KeepAliveInterval;
        webSocket.Options.KeepAliveTimeout = _options.KeepAliveTimeout;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(_options.ConnectTimeout);
        try
        {
            await webSocket.ConnectAsync(gatewayUri, timeout.Token);
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

        if (webSocket.HttpResponseHeaders?.TryGetValue(RbsHeaders.RenewedJoinToken, out var renewed) == true && renewed.FirstOrDefault() is { Length: > 0 } fresh)
        {
            _credentials.Renewed(fresh, AnnouncedLifetime(webSocket.HttpResponseHeaders));
        }

        if (webSocket.HttpResponseHeaders?.ContainsKey(RbsHeaders.GatewayReplica) == true)
        {
            // One of several replicas: from now on the replica set decides where the spares go (RunReplicaWatchAsync).
            _replicated.TrySetResult();
        }

        OnRelayPort(group, AnnouncedRelayPort(webSocket.HttpResponseHeaders));
        webSocket.HttpResponseHeaders = null;
        return new WebSocketTunnelStream(webSocket);
    }

    private static int? AnnouncedRelayPort(IReadOnlyDictionary<string, IEnumerable<string>>? headers) =>
        headers?.TryGetValue(RbsHeaders.GatewayRelayPort, out var values) == true
        && int.TryParse(values.FirstOrDefault(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port)
        && port is > 0 and <= IPEndPoint.MaxPort
            ? port
            : null;

    /// <summary>
    /// A 101 of <paramref name="group"/> announced <paramref name="port"/> (null: none): when that differs from what the group
    /// knew, its relay loops to the old port stop and, with a port, new ones start. Nothing once the group has stopped.
    /// Under the <see cref="_groups"/> lock, like the start of its WebSocket loops, so <see cref="LoopsEnded"/> sees them.
    /// </summary>
    private void OnRelayPort(SpareGroup group, int? port)
    {
        lock (_groups)
        {
            if (group.Stop.IsCancellationRequested || group.RelayPort == port)
            {
                return;
            }

            group.RelayPort = port;
            var stop = group.RestartRelay();
            if (port is { } announced)
            {
                group.RelayLoops = [.. group.RelayLoops.Where(t => !t.IsCompleted), .. _relay.Start(group.ConnectUri, announced, stop)];
            }
        }
    }

    private static TimeSpan? AnnouncedLifetime(IReadOnlyDictionary<string, IEnumerable<string>> headers) =>
        headers.TryGetValue(RbsHeaders.RenewedJoinTokenLifetime, out var values)
        && long.TryParse(values.FirstOrDefault(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var seconds)
        && seconds > 0
            ? TimeSpan.FromSeconds(seconds)
            : null;

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

    private TimeSpan Backoff(int failures) => Backoff(_options, failures);

    /// <summary>Full jitter: uniform in [0, min(cap, initial * 2^(n-1))]. Every dial loop of the agent (WebSocket and relay) backs off so.</summary>
    internal static TimeSpan Backoff(AgentTunnelOptions options, int failures)
    {
        var ceiling = options.ReconnectInitialDelay.TotalMilliseconds * Math.Pow(2, Math.Min(failures - 1, 30));
        ceiling = Math.Min(ceiling, options.ReconnectMaxDelay.TotalMilliseconds);
        return TimeSpan.FromMilliseconds(Random.Shared.NextDouble() * ceiling);
    }

    private Task<bool> DelayAsync(TimeSpan delay, CancellationToken stop) => DelayAsync(delay, _timeProvider, stop);

    /// <summary>False when <paramref name="stop"/> was cancelled first.</summary>
    internal static async Task<bool> DelayAsync(TimeSpan delay, TimeProvider timeProvider, CancellationToken stop)
    {
        try
        {
            await Task.Delay(delay, timeProvider, stop);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>The spare loops that dial one address: the configured one, or one gateway replica's agent endpoint.</summary>
    private sealed class SpareGroup(string replicaId, Uri connectUri, CancellationTokenSource stop) : IDisposable
    {
        /// <summary>The group of the configured gateway address (a single gateway, or before the replica set is known).</summary>
        public const string Configured = "";

        public string ReplicaId => replicaId;

        public Uri ConnectUri => connectUri;

        /// <summary>Cancelled when the group ends (the replica left the set) or the listener stops.</summary>
        public CancellationToken Stop { get; } = stop.Token;

        private readonly List<CancellationTokenSource> _relayStops = [];

        public Task[] Loops { get; set; } = [];

        /// <summary>The relay port the group's latest 101 announced; null before, or from a gateway without a relay endpoint.</summary>
        public int? RelayPort { get; set; }

        /// <summary>The relay spare loops started so far (those of an earlier port end on their own).</summary>
        public Task[] RelayLoops { get; set; } = [];

        /// <summary>Stops the relay loops to the previous port; the token for those to the new one (cancelled with <see cref="Stop"/>).</summary>
        public CancellationToken RestartRelay()
        {
            if (_relayStops.Count > 0)
            {
                _relayStops[^1].Cancel();
            }

            // Disposed with the group only: a loop of an earlier port may still be looking at its token.
            _relayStops.Add(CancellationTokenSource.CreateLinkedTokenSource(Stop));
            return _relayStops[^1].Token;
        }

        public void Cancel() => stop.Cancel();

        public void Dispose()
        {
            foreach (var relayStop in _relayStops)
            {
                relayStop.Dispose();
            }

            stop.Dispose();
        }
    }

    private sealed class TunnelRejectedException(HttpStatusCode statusCode) : Exception($"HTTP {(int)statusCode}")
    {
        public HttpStatusCode StatusCode => statusCode;
    }

    private enum SpareOutcome
    {
        InUse,
        Closed,
        Stopped,
    }

    /// <summary>A spare loop's idle tunnel, which the renewal loop may ask to rotate.</summary>
    private sealed class IdleSpare(WebSocketTunnelStream stream, long connectedAt)
    {
        private readonly Lock _lock = new();
        private TaskCompletionSource _requested = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private TaskCompletionSource? _finished;
        private bool _left;

        public WebSocketTunnelStream Stream { get; private set; } = stream;

        /// <summary>When <see cref="Stream"/> connected (a timestamp of the listener's TimeProvider).</summary>
        public long ConnectedAt { get; private set; } = connectedAt;

        public Task RotationRequested
        {
            get
            {
                lock (_lock)
                {
                    return _requested.Task;
                }
            }
        }

        /// <summary>Asks the owning loop to rotate; completes when it did, could not, or the tunnel went into use.</summary>
        public Task RequestRotation()
        {
            lock (_lock)
            {
                if (_left)
                {
                    return Task.CompletedTask;
                }

                _finished ??= new(TaskCreationOptions.RunContinuationsAsynchronously);
                _requested.TrySetResult();
                return _finished.Task;
            }
        }

        /// <summary>The owning loop is done with a request (or with this spare); <paramref name="replacement"/> is its fresh tunnel, if any.</summary>
        public void RotationFinished(WebSocketTunnelStream? replacement, long connectedAt)
        {
            TaskCompletionSource? finished;
            lock (_lock)
            {
                if (replacement is not null)
                {
                    Stream = replacement;
                    ConnectedAt = connectedAt;
                }

                _requested = new(TaskCreationOptions.RunContinuationsAsynchronously);
                finished = _finished;
                _finished = null;
            }

            finished?.TrySetResult();
        }

        /// <summary>The tunnel is no longer an idle spare (in use, closed, or the listener stopped): no rotation is pending any more.</summary>
        public void Leave()
        {
            TaskCompletionSource? finished;
            lock (_lock)
            {
                _left = true;
                finished = _finished;
                _finished = null;
            }

            finished?.TrySetResult();
        }
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

        [LoggerMessage(EventId = 303, Level = LogLevel.Critical, Message = "The gateway at {Gateway} refused this agent's credentials (HTTP {Status} {Reason}): the join token is invalid or for another key, or it expired and the orchestrator no longer knows this agent as live. Not dialling again; requests in flight keep running.")]
        public static partial void Rejected(ILogger logger, Uri gateway, int status, string reason);

        [LoggerMessage(EventId = 314, Level = LogLevel.Information, Message = "Gateway replica set: {Count} replica(s): {Replicas}")]
        public static partial void ReplicaSet(ILogger logger, int count, string replicas);

        [LoggerMessage(EventId = 315, Level = LogLevel.Information, Message = "Keeping spare tunnels to gateway replica {ReplicaId} at {Gateway}")]
        public static partial void ReplicaAdded(ILogger logger, string replicaId, Uri gateway);

        [LoggerMessage(EventId = 316, Level = LogLevel.Information, Message = "Gateway replica '{ReplicaId}' ({Gateway}) left the set: closing its idle spares (tunnels in use finish their streams)")]
        public static partial void ReplicaDropped(ILogger logger, string replicaId, Uri gateway);

        [LoggerMessage(EventId = 317, Level = LogLevel.Warning, Message = "Could not read the gateway replica set from {Gateway}, retrying in {DelayMs:0} ms: {Reason}")]
        public static partial void ReplicaWatchFailed(ILogger logger, Uri gateway, double delayMs, string reason);

        [LoggerMessage(EventId = 309, Level = LogLevel.Debug, Message = "The join token has used up half its lifetime: rotating the oldest idle tunnel to renew it")]
        public static partial void RenewingCredentials(ILogger logger);

        [LoggerMessage(EventId = 310, Level = LogLevel.Debug, Message = "Rotated an idle tunnel: a fresh one is dialled (renewed join token), the old one closed")]
        public static partial void SpareRotated(ILogger logger);

        [LoggerMessage(EventId = 311, Level = LogLevel.Warning, Message = "Rotating an idle tunnel to {Gateway} failed; keeping the old one and retrying: {Reason}")]
        public static partial void RotationDialFailed(ILogger logger, Uri gateway, string reason);
    }
}

/// <summary>The tunnel's state, for the agent's wiring (readiness, stop after a refusal) and tests.</summary>
internal sealed class AgentTunnelStatus
{
    private readonly TaskCompletionSource _firstConnected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<string> _rejected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _requestsLock = new();
    private TaskCompletionSource _idle = Completed();
    private TunnelConnectionListener? _listener;
    private int _open;
    private int _requests;

    /// <summary>Completes when the first tunnel to the gateway is open (the gateway answered the upgrade; it registers the tunnel a moment later).</summary>
    public Task FirstConnected => _firstConnected.Task;

    /// <summary>Completes with the reason when the gateway rejected the join token (final).</summary>
    public Task<string> Rejected => _rejected.Task;

    /// <summary>
    /// Completes when every dial loop has ended (after a final refusal, or once the agent stops): from then on the
    /// agent dials no more. Completed while no listener is bound.
    /// </summary>
    public Task DialLoopsEnded => _listener?.LoopsEnded ?? Task.CompletedTask;

    /// <summary>Tunnels open now, WebSocket and relay (idle or parked spares plus those carrying HTTP/2 connections).</summary>
    public int OpenTunnels => Volatile.Read(ref _open);

    /// <summary>The join token in use, once the listener is bound.</summary>
    public JoinCredentials? Credentials => _listener?.Credentials;

    /// <summary>Requests (gRPC calls: commands, syncs, output reads) in flight on any endpoint of the agent.</summary>
    public int ActiveRequests
    {
        get
        {
            lock (_requestsLock)
            {
                return _requests;
            }
        }
    }

    /// <summary>Cuts every tunnel as a network failure would (tests, emergency drain); the listener reconnects.</summary>
    public void AbortAllTunnels() => _listener?.AbortAll();

    /// <summary>Completes when no request is in flight.</summary>
    public Task WhenIdleAsync(CancellationToken cancellationToken)
    {
        lock (_requestsLock)
        {
            return _idle.Task.WaitAsync(cancellationToken);
        }
    }

    internal void Attach(TunnelConnectionListener listener) => _listener = listener;

    internal void TunnelOpened()
    {
        Interlocked.Increment(ref _open);
        _firstConnected.TrySetResult();
    }

    internal void TunnelClosed() => Interlocked.Decrement(ref _open);

    internal bool Reject(string reason) => _rejected.TrySetResult(reason);

    internal void RequestStarted()
    {
        lock (_requestsLock)
        {
            if (_requests++ == 0)
            {
                _idle = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }
        }
    }

    internal void RequestEnded()
    {
        lock (_requestsLock)
        {
            if (--_requests == 0)
            {
                _idle.TrySetResult();
            }
        }
    }

    private static TaskCompletionSource Completed()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        done.SetResult();
        return done;
    }
}
