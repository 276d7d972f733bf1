// The relay's client side, linked into jbazel and bench/Rbs.Bench (and, as all of Shared/, the servers and Tests): BCL only, trim-safe.
using System.Collections.Concurrent;
using System.Net;
using System.Net.Http;
using System.Net.Security;
using System.Net.Sockets;

namespace Rbs.Shared.Tunnel;

/// <summary>How one connection to the gateway went: relayed to the agent, or not (and why), for a debug trace.</summary>
/// <param name="Relayed">True when the connection is spliced onto an agent tunnel.</param>
/// <param name="Detail">The gateway's answer, or why there was none (refusal, old gateway, remembered fallback).</param>
internal sealed record RelayOutcome(bool Relayed, string Detail);

/// <summary>
/// The gateway did not relay a connection (it refused, closed, garbled its answer, or refused recently). Thrown by
/// <see cref="RelayClient.ConnectAsync(SocketsHttpConnectionContext, CancellationToken)"/> before any HTTP/2 byte was
/// sent, so <see cref="RelayHttpHandler"/> can send the request over a plain connection instead.
/// </summary>
internal sealed class RelayRefusedException(string message, Exception? innerException = null) : Exception(message, innerException);

/// <summary>
/// Which (gateway, route) pairs did not relay recently, so a gateway without relay support (or without a free tunnel)
/// costs one failed handshake per <see cref="Period"/>, not one per connection. Entries are per route a process used:
/// one for jbazel, a handful for the bench; an expired one is dropped when next read.
/// </summary>
internal sealed class RelayFallbacks(TimeProvider time, TimeSpan period)
{
    /// <summary>How long a refusal is remembered by default: 30 s.</summary>
    public static readonly TimeSpan DefaultPeriod = TimeSpan.FromSeconds(30);

    /// <summary>The process's memory, shared by every channel to the same gateway and route.</summary>
    public static RelayFallbacks Shared { get; } = new(TimeProvider.System, DefaultPeriod);

    private readonly ConcurrentDictionary<string, (DateTimeOffset Until, string Reason)> _refused = new(StringComparer.Ordinal);

    public TimeSpan Period => period;

    /// <summary>Why <paramref name="key"/> did not relay, while that is remembered; else null.</summary>
    public string? Reason(string key)
    {
        if (!_refused.TryGetValue(key, out var entry))
        {
            return null;
        }

        if (time.GetUtcNow() < entry.Until)
        {
            return entry.Reason;
        }

        _refused.TryRemove(KeyValuePair.Create(key, entry));
        return null;
    }

    public void Remember(string key, string reason) => _refused[key] = (time.GetUtcNow() + period, reason);

    public void Forget(string key) => _refused.TryRemove(key, out _);
}

/// <summary>
/// Opens relayed connections to one agent through one gateway (Shared/Tunnel/RelayProtocol.cs): TCP to the gateway's
/// public endpoint, TLS (ALPN h2, the platform's default certificate validation, as for any https gRPC channel) when
/// its address is https://, then the relay request <c>RBS-RELAY/1 &lt;route&gt; &lt;session token&gt;</c>. On
/// <c>200</c> the stream is the agent's own HTTP/2 server, spoken with prior knowledge; so the channel's handler must
/// see an http:// address (<see cref="RelayAddress"/>): TLS, when there is any, is this class's, not the handler's. Anything else
/// throws <see cref="RelayRefusedException"/> and is remembered in <see cref="RelayFallbacks"/>.
/// </summary>
internal sealed class RelayClient
{
    /// <summary>How long the gateway may take to answer the relay request: 10 s, under SocketsHttpHandler's ConnectTimeout (15 s in jbazel) so a silent gateway ends in the plain fallback, not a failed call.</summary>
    public static readonly TimeSpan DefaultHandshakeTimeout = TimeSpan.FromSeconds(10);

    private readonly Uri _gateway;
    private readonly string _route;
    private readonly string _sessionToken;
    private readonly RelayFallbacks _fallbacks;
    private readonly Func<Stream, Stream>? _wrapConnection;
    private readonly TimeProvider _time;
    private RelayOutcome? _lastOutcome;

    /// <param name="gateway">The gateway's public address (http:// for h2c, https:// for TLS).</param>
    /// <param name="route">The agent route GetServer returned.</param>
    /// <param name="sessionToken">The session token GetServer returned; the gateway checks it before relaying.</param>
    /// <param name="fallbacks">Where refusals are remembered; default <see cref="RelayFallbacks.Shared"/>.</param>
    /// <param name="wrapConnection">Wraps the TCP stream before TLS and the handshake (jbazel: its coalescing read-ahead).</param>
    /// <param name="time">The clock of the handshake timeout; default the system's.</param>
    public RelayClient(Uri gateway, string route, string sessionToken, RelayFallbacks? fallbacks = null, Func<Stream, Stream>? wrapConnection = null, TimeProvider? time = null)
    {
        if (gateway.Scheme != Uri.UriSchemeHttp && gateway.Scheme != Uri.UriSchemeHttps)
        {
            throw new ArgumentException($"a relay needs an http:// or https:// gateway address, not '{gateway}'", nameof(gateway));
        }

        if (!CanCarry(route, sessionToken))
        {
            throw new ArgumentException("a relay request carries a non-empty route and session token of printable ASCII without spaces", nameof(route));
        }

        _gateway = gateway;
        _route = route;
        _sessionToken = sessionToken;
        _fallbacks = fallbacks ?? RelayFallbacks.Shared;
        _wrapConnection = wrapConnection;
        _time = time ?? TimeProvider.System;
        Key = $"{gateway.GetLeftPart(UriPartial.Authority)} {route}";
    }

    /// <summary>The (gateway, route) refusals are remembered under.</summary>
    public string Key { get; }

    /// <summary>How long the gateway may take to answer; default <see cref="DefaultHandshakeTimeout"/>.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = DefaultHandshakeTimeout;

    /// <summary>Called with each connection's outcome (jbazel marks it in its phase trace); never writes anywhere itself.</summary>
    public Action<RelayOutcome>? Observer { get; init; }

    /// <summary>The latest connection's outcome; null before the first.</summary>
    public RelayOutcome? LastOutcome => Volatile.Read(ref _lastOutcome);

    /// <summary>Why this gateway and route do not relay now (a refusal remembered), or null: the next connection tries.</summary>
    public string? RememberedRefusal => _fallbacks.Reason(Key);

    /// <summary>
    /// The address a relay channel's handler is given: the gateway's host and port with the http scheme, so the
    /// handler speaks HTTP/2 with prior knowledge on the stream this class returns (TLS included) instead of
    /// starting TLS itself.
    /// </summary>
    public static Uri RelayAddress(Uri address) =>
        address.Scheme == Uri.UriSchemeHttp ? address : new UriBuilder(address) { Scheme = Uri.UriSchemeHttp, Port = address.Port }.Uri;

    /// <summary>True when the relay request can carry <paramref name="route"/> and <paramref name="sessionToken"/> (RelayProtocol's field rule); else the caller stays on the plain path.</summary>
    public static bool CanCarry(string? route, string? sessionToken) => IsField(route) && IsField(sessionToken);

    /// <summary>True when <paramref name="exception"/> (or one it wraps) says the relay was refused before anything was sent.</summary>
    public static bool IsRefusal(Exception exception)
    {
        for (Exception? e = exception; e is not null; e = e.InnerException)
        {
            if (e is RelayRefusedException)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>For <see cref="SocketsHttpHandler.ConnectCallback"/> (the context's endpoint is this gateway's).</summary>
    public ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken) =>
        ConnectAsync(cancellationToken);

    /// <summary>
    /// A relayed connection to the agent. Failing to reach the gateway (TCP or TLS) throws as any connection does;
    /// a gateway that answers anything but 200, closes or garbles throws <see cref="RelayRefusedException"/>.
    /// </summary>
    public async ValueTask<Stream> ConnectAsync(CancellationToken cancellationToken)
    {
        if (RememberedRefusal is { } remembered)
        {
            throw Refused($"not relayed for {_fallbacks.Period.TotalSeconds:0} s after: {remembered}", remember: false);
        }

        var stream = await DialAsync(cancellationToken);
        string refusal;
        Exception? cause = null;
        using var timeout = new CancellationTokenSource(HandshakeTimeout, _time);
        using var handshake = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            await stream.WriteAsync(RelayProtocol.Line(RelayProtocol.ClientMagic, _route, _sessionToken), handshake.Token);
            await stream.FlushAsync(handshake.Token);
            var (status, reason) = await RelayProtocol.ReadReplyAsync(stream, RelayProtocol.ClientMagic.ToArray(), handshake.Token);
            if (status == RelayProtocol.Ok)
            {
                _fallbacks.Forget(Key);
                Report(new RelayOutcome(true, $"{status} {reason}".TrimEnd()));
                return stream;
            }

            refusal = $"the gateway refused the relay: {status} {reason}".TrimEnd();
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException)
        {
            // EndOfStreamException too: a gateway without the relay reads the line as a broken HTTP/2 preface and closes.
            refusal = $"no relay answer from the gateway ({ex.Message})";
            cause = ex;
        }
        catch (OperationCanceledException ex) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            refusal = $"no relay answer from the gateway within {HandshakeTimeout.TotalSeconds:0.#} s";
            cause = ex;
        }
        catch
        {
            await stream.DisposeAsync();
            throw;
        }

        await stream.DisposeAsync();
        throw Refused(refusal, remember: true, cause);
    }

    /// <summary>TCP (no Nagle delay: HTTP/2 frames go out when written), the caller's wrapper, then TLS for https://.</summary>
    private async Task<Stream> DialAsync(CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        Stream? stream = null;
        try
        {
            await socket.ConnectAsync(new DnsEndPoint(_gateway.IdnHost, _gateway.Port), cancellationToken);
            stream = new NetworkStream(socket, ownsSocket: true);
            stream = _wrapConnection?.Invoke(stream) ?? stream;
            if (_gateway.Scheme != Uri.UriSchemeHttps)
            {
                return stream;
            }

            var tls = new SslStream(stream, leaveInnerStreamOpen: false);
            stream = tls;
            await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = _gateway.IdnHost,
                ApplicationProtocols = [SslApplicationProtocol.Http2],
            }, cancellationToken);
            return tls;
        }
        catch
        {
            if (stream is not null)
            {
                await stream.DisposeAsync();
            }
            else
            {
                socket.Dispose();
            }

            throw;
        }
    }

    private static bool IsField(string? text) => !string.IsNullOrEmpty(text) && text.All(c => c is > ' ' and <= '~');

    private RelayRefusedException Refused(string reason, bool remember, Exception? cause = null)
    {
        if (remember)
        {
            _fallbacks.Remember(Key, reason);
        }

        Report(new RelayOutcome(false, reason));
        return new RelayRefusedException($"{reason}; the calls to route {_route} go over a plain connection to the gateway at {_gateway.GetLeftPart(UriPartial.Authority)}", cause);
    }

    private void Report(RelayOutcome outcome)
    {
        Volatile.Write(ref _lastOutcome, outcome);
        Observer?.Invoke(outcome);
    }
}

/// <summary>
/// The handler of a relay channel: each request goes to <see cref="DelegatingHandler.InnerHandler"/>, a
/// SocketsHttpHandler whose connections are <see cref="RelayClient"/>'s (the address rewritten to
/// <see cref="RelayClient.RelayAddress"/>), unless the relay was refused, in which case it goes unchanged to the
/// plain handler: the gateway then forwards each stream itself and answers a bad token or route with a gRPC status.
/// The plain path cannot share the relay's handler, because Kestrel refuses an HTTP/2 request whose <c>:scheme</c>
/// (http, for the relay's prior knowledge) is not its connection's (https).
/// </summary>
internal sealed class RelayHttpHandler : DelegatingHandler
{
    private readonly RelayClient _relay;
    private readonly HttpMessageInvoker _plain;

    /// <param name="relay">Opens the relayed connections; it becomes <paramref name="relayed"/>'s ConnectCallback.</param>
    /// <param name="relayed">The handler for relayed connections, configured as the caller's channels are (keepalive, windows).</param>
    /// <param name="plain">Sends a request the relay refused; its handler is the caller's ordinary one for the gateway (and stays the caller's to dispose unless the invoker owns it).</param>
    public RelayHttpHandler(RelayClient relay, SocketsHttpHandler relayed, HttpMessageInvoker plain)
    {
        relayed.ConnectCallback = relay.ConnectAsync;
        InnerHandler = relayed;
        _relay = relay;
        _plain = plain;
    }

    public RelayClient Relay => _relay;

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var address = request.RequestUri ?? throw new InvalidOperationException("a relayed request needs an absolute address");
        if (_relay.RememberedRefusal is null)
        {
            request.RequestUri = RelayClient.RelayAddress(address);
            try
            {
                return await base.SendAsync(request, cancellationToken);
            }
            catch (HttpRequestException ex) when (NothingSent(ex))
            {
                // The refusal (or, for requests that waited for the same connection, its echo): retried below.
            }

            request.RequestUri = address;
        }

        return await _plain.SendAsync(request, cancellationToken);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _plain.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary>
    /// The relay was refused and this request never left: the refusal itself (SocketsHttpHandler hands the connect's
    /// exception to every request that waited for that connection), or, should a waiter get a bare connection error
    /// instead, that error while the refusal is remembered; a connection error means nothing was sent, so a resend is safe.
    /// </summary>
    private bool NothingSent(HttpRequestException exception) =>
        RelayClient.IsRefusal(exception)
        || (exception.HttpRequestError is HttpRequestError.ConnectionError or HttpRequestError.VersionNegotiationError
            && _relay.RememberedRefusal is not null);
}
