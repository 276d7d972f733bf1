using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Rbs.Shared.Tunnel;

namespace Rbs.Agent.Tunnel;

/// <summary>
/// The agent's side of the relay (<see cref="RelayProtocol"/>): raw tunnels parked at a gateway replica's relay endpoint,
/// onto which the gateway splices a client's whole TCP connection, so the client's HTTP/2 connection ends at this
/// agent's Kestrel and the gateway only copies bytes. <see cref="AgentTunnelOptions.RelaySpareConnections"/> loops per
/// gateway replica each keep one tunnel parked: dial, handshake with the current join token, wait for
/// <see cref="RelayProtocol.Go"/>, answer <see cref="RelayProtocol.Ready"/>, hand the connection to Kestrel, dial a
/// replacement. Plain TCP goes to Kestrel's own socket transport (the same gathered sends as direct mode); TLS (a
/// <c>wss://</c> gateway) as a stream through <see cref="TunnelConnection"/>.
/// <para>
/// A refusal is retried with the spare loops' backoff and never final: the WebSocket dials renew the token and own the
/// decision that the credentials are refused (which stops the group, and with it these loops).
/// </para>
/// </summary>
internal sealed partial class RelayTunnelDialer(
    AgentTunnelOptions options,
    JoinCredentials credentials,
    AgentTunnelStatus status,
    TimeProvider timeProvider,
    ILogger logger,
    ILogger socketsLogger,
    Func<ConnectionContext, bool> handToKestrel) : IDisposable
{
    private static readonly byte[] s_magic = RelayProtocol.TunnelMagic.ToArray();
    private static readonly byte[] s_ready = [RelayProtocol.Ready];

    private readonly HashSet<RelayTunnel> _live = [];
    private readonly Lock _socketsLock = new();
    private SocketConnectionContextFactory? _sockets;
    private bool _disposed;

    /// <summary>
    /// Starts the relay spare loops to port <paramref name="port"/> on the host of <paramref name="connectUri"/> (TLS when it
    /// is <c>wss://</c>); they end when <paramref name="stop"/> is cancelled, closing their parked tunnels. None when
    /// <see cref="AgentTunnelOptions.RelaySpareConnections"/> is 0.
    /// </summary>
    public Task[] Start(Uri connectUri, int port, CancellationToken stop)
    {
        if (options.RelaySpareConnections <= 0)
        {
            return [];
        }

        var relay = new RelayAddress(connectUri.IdnHost, port, connectUri.Scheme == "wss", $"{connectUri.Host}:{port}");
        Log.KeepingRelayTunnels(logger, options.RelaySpareConnections, relay.Display, relay.Tls ? "TLS" : "plain TCP");
        return [.. Enumerable.Range(0, options.RelaySpareConnections).Select(_ => Task.Run(() => RunLoopAsync(relay, stop), CancellationToken.None))];
    }

    /// <summary>Cuts every relay tunnel, parked and in use, as a network failure would; the loops redial.</summary>
    public void AbortAll()
    {
        RelayTunnel[] live;
        lock (_live)
        {
            live = [.. _live];
        }

        foreach (var tunnel in live)
        {
            if (tunnel.Connection is { } connection)
            {
                connection.Abort(new ConnectionAbortedException("The relay tunnel was cut."));
            }
            else
            {
                tunnel.Cut();
            }
        }
    }

    public void Dispose()
    {
        lock (_socketsLock)
        {
            _disposed = true;
            _sockets?.Dispose();
        }
    }

    /// <summary>Keeps one tunnel parked at <paramref name="relay"/> until <paramref name="stop"/>.</summary>
    private async Task RunLoopAsync(RelayAddress relay, CancellationToken stop)
    {
        var failures = 0;
        while (!stop.IsCancellationRequested)
        {
            RelayTunnel tunnel;
            try
            {
                tunnel = await DialAsync(relay, stop);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                failures++;
                var delay = TunnelConnectionListener.Backoff(options, failures);
                if (ex is RelayRefusedException refused)
                {
                    Log.Refused(logger, relay.Display, refused.Status, refused.Reason, failures, delay.TotalMilliseconds);
                }
                else
                {
                    Log.DialFailed(logger, relay.Display, failures, delay.TotalMilliseconds, ex.GetBaseException().Message);
                }

                if (!await TunnelConnectionListener.DelayAsync(delay, timeProvider, stop))
                {
                    return;
                }

                continue;
            }

            var closed = await ParkAsync(tunnel, stop);
            if (closed is null)
            {
                failures = 0;
                Log.InUse(logger, relay.Display);
                HandToKestrel(tunnel);
                continue;
            }

            await CloseAsync(tunnel);
            if (stop.IsCancellationRequested)
            {
                return;
            }

            failures = timeProvider.GetElapsedTime(tunnel.ParkedAt) > TunnelConnectionListener.StableConnection ? 1 : failures + 1;
            var wait = TunnelConnectionListener.Backoff(options, failures);
            Log.ParkedTunnelClosed(logger, relay.Display, closed, wait.TotalMilliseconds);
            if (!await TunnelConnectionListener.DelayAsync(wait, timeProvider, stop))
            {
                return;
            }
        }
    }

    /// <summary>TCP connect, TLS if asked, handshake; a parked tunnel, or throws (<see cref="RelayRefusedException"/> for a refusal).</summary>
    private async Task<RelayTunnel> DialAsync(RelayAddress relay, CancellationToken stop)
    {
        // Dual mode where the OS has IPv6: one socket reaches IPv4 and IPv6 gateways alike.
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        Stream? stream = null;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timeout.CancelAfter(options.ConnectTimeout);
        try
        {
            // A parked tunnel carries no byte (the protocol has no ping), so only TCP keepalive finds a gateway that died
            // or a NAT that forgot the flow: within ~1 minute (30 s + 3 x 10 s) instead of at the next Go that never comes.
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 30);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 10);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);
            await socket.ConnectAsync(relay.EndPoint, timeout.Token);
            // The socket stays ours: in plain mode Kestrel's socket transport takes it over once the tunnel is in use.
            stream = new NetworkStream(socket, ownsSocket: false);
            if (relay.Tls)
            {
                var tls = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = tls;
                await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = relay.Host }, timeout.Token);
            }

            // The current token: the WebSocket dials keep it renewed.
            await stream.WriteAsync(RelayProtocol.Line(RelayProtocol.TunnelMagic, credentials.Token), timeout.Token);
            await stream.FlushAsync(timeout.Token);
            var (code, reason) = await RelayProtocol.ReadReplyAsync(stream, s_magic, timeout.Token);
            if (code != RelayProtocol.Ok)
            {
                throw new RelayRefusedException(code, reason);
            }
        }
        catch (Exception ex)
        {
            if (stream is not null)
            {
                await stream.DisposeAsync();
            }

            socket.Dispose();
            if (ex is OperationCanceledException && !stop.IsCancellationRequested)
            {
                // No inner exception: the log shows the base exception's message, which would be "operation canceled".
                throw new TimeoutException($"no relay handshake within {options.ConnectTimeout} (Agent:Tunnel:ConnectTimeout)");
            }

            throw;
        }

        var tunnel = new RelayTunnel(socket, stream, timeProvider.GetTimestamp());
        lock (_live)
        {
            _live.Add(tunnel);
        }

        status.TunnelOpened();
        return tunnel;
    }

    /// <summary>Waits while the tunnel is parked: null once the gateway sent Go and the agent answered Ready, else why it closed.</summary>
    private static async Task<string?> ParkAsync(RelayTunnel tunnel, CancellationToken stop)
    {
        var one = new byte[1];
        try
        {
            // Exactly one byte: whatever follows Go is the client's HTTP/2 and belongs to Kestrel.
            if (await tunnel.Stream.ReadAsync(one, stop) == 0)
            {
                return "the gateway closed it";
            }

            if (one[0] != RelayProtocol.Go)
            {
                return $"the gateway sent 0x{one[0]:x2} instead of Go";
            }

            await tunnel.Stream.WriteAsync(s_ready, stop);
            await tunnel.Stream.FlushAsync(stop);
            return null;
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            return "stopping";
        }
        catch (Exception ex)
        {
            // Reset, keepalive gave up, or cut by AbortAll: whatever it was, this tunnel is done.
            return ex.GetBaseException().Message;
        }
    }

    /// <summary>The tunnel serves HTTP/2 from now on: Kestrel accepts it like any other connection of the tunnel endpoint.</summary>
    private void HandToKestrel(RelayTunnel tunnel)
    {
        ConnectionContext connection;
        try
        {
            if (tunnel.Stream is SslStream)
            {
                connection = new TunnelConnection(tunnel.Stream, closed: null, tunnel.Cut, tunnel.Socket.LocalEndPoint!, _ => Ended(tunnel));
            }
            else if (SocketTransport() is { } sockets)
            {
                connection = new RelaySocketConnection(sockets.Create(tunnel.Socket), () => Ended(tunnel));
            }
            else
            {
                // The listener is gone: nobody would accept the connection.
                Ended(tunnel);
                return;
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Cut (AbortAll) between Go and here: the gateway's client sees the connection fail, as on a network failure.
            Log.HandOverFailed(logger, ex.GetBaseException().Message);
            Ended(tunnel);
            return;
        }

        tunnel.Connection = connection;
        if (!handToKestrel(connection))
        {
            // Unbound or credentials refused meanwhile: the gateway's client retries elsewhere.
            _ = connection.DisposeAsync().AsTask();
        }
    }

    /// <summary>Kestrel's socket transport for in-use plain tunnels, created with the first; null once disposed.</summary>
    private SocketConnectionContextFactory? SocketTransport()
    {
        lock (_socketsLock)
        {
            // Kestrel's defaults (its own memory pool: the factory's options do not take the agent's 64 KiB one).
            return _disposed ? null : _sockets ??= new SocketConnectionContextFactory(new SocketConnectionFactoryOptions(), socketsLogger);
        }
    }

    /// <summary>A parked tunnel ends: it no longer counts as open.</summary>
    private async Task CloseAsync(RelayTunnel tunnel)
    {
        Forget(tunnel);
        await tunnel.Stream.DisposeAsync();
        tunnel.Socket.Dispose();
    }

    /// <summary>Kestrel disposed the connection of an in-use tunnel (or it never reached Kestrel).</summary>
    private void Ended(RelayTunnel tunnel)
    {
        Forget(tunnel);
        tunnel.Socket.Dispose();
    }

    private void Forget(RelayTunnel tunnel)
    {
        if (tunnel.End())
        {
            lock (_live)
            {
                _live.Remove(tunnel);
            }

            status.TunnelClosed();
        }
    }

    private sealed record RelayAddress(string Host, int Port, bool Tls, string Display)
    {
        public EndPoint EndPoint { get; } = IPAddress.TryParse(Host, out var ip) ? new IPEndPoint(ip, Port) : new DnsEndPoint(Host, Port);
    }

    /// <summary>One relay tunnel from its handshake until it closes (parked) or Kestrel disposes its connection (in use).</summary>
    private sealed class RelayTunnel(Socket socket, Stream stream, long parkedAt)
    {
        private int _ended;

        public Socket Socket => socket;

        /// <summary>The handshake's stream: a NetworkStream that does not own the socket, or the SslStream over it.</summary>
        public Stream Stream => stream;

        /// <summary>When the handshake succeeded (a timestamp of the dialer's TimeProvider).</summary>
        public long ParkedAt => parkedAt;

        /// <summary>Kestrel's connection once the tunnel is in use.</summary>
        public ConnectionContext? Connection
        {
            get => Volatile.Read(ref field);
            set => Volatile.Write(ref field, value);
        }

        /// <summary>True the first time only: the tunnel is counted closed exactly once.</summary>
        public bool End() => Interlocked.Exchange(ref _ended, 1) == 0;

        /// <summary>Resets the connection (RST, as a network failure would); whoever reads or writes it next sees the failure.</summary>
        public void Cut()
        {
            try
            {
                socket.LingerState = new LingerOption(true, 0);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Already closed.
            }

            socket.Dispose();
        }
    }

    /// <summary>
    /// Kestrel's socket connection of an in-use plain tunnel, telling the dialer when Kestrel disposes it (so the
    /// tunnel stops counting as open); everything else is the socket transport's own.
    /// </summary>
    private sealed class RelaySocketConnection(ConnectionContext inner, Action onDisposed) : ConnectionContext
    {
        private int _disposed;

        public override string ConnectionId
        {
            get => inner.ConnectionId;
            set => inner.ConnectionId = value;
        }

        public override IFeatureCollection Features => inner.Features;

        public override IDictionary<object, object?> Items
        {
            get => inner.Items;
            set => inner.Items = value;
        }

        public override IDuplexPipe Transport
        {
            get => inner.Transport;
            set => inner.Transport = value;
        }

        public override CancellationToken ConnectionClosed
        {
            get => inner.ConnectionClosed;
            set => inner.ConnectionClosed = value;
        }

        public override EndPoint? LocalEndPoint
        {
            get => inner.LocalEndPoint;
            set => inner.LocalEndPoint = value;
        }

        public override EndPoint? RemoteEndPoint
        {
            get => inner.RemoteEndPoint;
            set => inner.RemoteEndPoint = value;
        }

        public override void Abort(ConnectionAbortedException abortReason) => inner.Abort(abortReason);

        public override async ValueTask DisposeAsync()
        {
            try
            {
                await inner.DisposeAsync();
            }
            finally
            {
                if (Interlocked.Exchange(ref _disposed, 1) == 0)
                {
                    onDisposed();
                }
            }

            await base.DisposeAsync();
        }
    }

    private sealed class RelayRefusedException(int status, string reason) : Exception($"relay status {status} {reason}")
    {
        public int Status => status;

        public string Reason => reason;
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 318, Level = LogLevel.Information, Message = "Keeping {Count} relay tunnels to {Relay} ({Transport})")]
        public static partial void KeepingRelayTunnels(ILogger logger, int count, string relay, string transport);

        [LoggerMessage(EventId = 319, Level = LogLevel.Debug, Message = "A relay tunnel to {Relay} went into use; dialling a replacement")]
        public static partial void InUse(ILogger logger, string relay);

        [LoggerMessage(EventId = 320, Level = LogLevel.Warning, Message = "Relay tunnel dial to {Relay} failed (attempt {Attempt}), retrying in {DelayMs:0} ms: {Reason}")]
        public static partial void DialFailed(ILogger logger, string relay, int attempt, double delayMs, string reason);

        [LoggerMessage(EventId = 321, Level = LogLevel.Warning, Message = "The relay endpoint {Relay} refused a tunnel ({Status} {Reason}; attempt {Attempt}), retrying in {DelayMs:0} ms (the WebSocket tunnels decide whether the credentials are refused for good)")]
        public static partial void Refused(ILogger logger, string relay, int status, string reason, int attempt, double delayMs);

        [LoggerMessage(EventId = 323, Level = LogLevel.Warning, Message = "A relay tunnel the gateway took closed before Kestrel had it: {Reason}")]
        public static partial void HandOverFailed(ILogger logger, string reason);

        [LoggerMessage(EventId = 322, Level = LogLevel.Information, Message = "A parked relay tunnel to {Relay} closed ({Reason}); redialling in {DelayMs:0} ms")]
        public static partial void ParkedTunnelClosed(ILogger logger, string relay, string reason, double delayMs);
    }
}
