using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Tunnel;
using Rbs.Shared.Hosting;
using Rbs.Shared.Tokens;
using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Relay;

/// <summary>
/// The relay endpoint (<see cref="GatewayOptions.RelayListen"/>): a plain TCP listener where agents park raw relay tunnels.
/// Each connection's first line is <c>RBS-TUNNEL/1 &lt;join token&gt;</c> (<see cref="RelayProtocol"/>), within the
/// handshake timeout; a valid join token parks the socket in <see cref="RelayTunnelPool"/> under the token's agent and
/// user, anything else is answered with a status and closed. The gateway owns these sockets outright (not Kestrel), so a
/// relay reads the agent's output in reads of <see cref="GatewayOptions.RelayBufferSize"/>. Bound when the host starts,
/// before Kestrel, so that the first tunnel's 101 can announce the port (<see cref="Port"/>).
/// </summary>
internal sealed partial class RelayTunnelListener(
    RelayTunnelPool pool,
    RbsTokenService tokens,
    AgentTunnelRegistry registry,
    IOptions<GatewayOptions> options,
    IOptions<ServerLimitsOptions> limits,
    ILogger<RelayTunnelListener> logger) : IHostedService, IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private Socket? _listener;
    private Task _accepting = Task.CompletedTask;
    private int _disposed;

    /// <summary>The bound port, announced on every tunnel's 101; null while not listening (the relay is off, or not started).</summary>
    public int? Port { get; private set; }

    /// <summary>The bound address, e.g. <c>127.0.0.1:40123</c>; null while not listening.</summary>
    public IPEndPoint? EndPoint => _listener?.LocalEndPoint as IPEndPoint;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var o = options.Value;
        if (!o.RelayEnabled)
        {
            return Task.CompletedTask;
        }

        var address = string.IsNullOrWhiteSpace(o.RelayListen) ? $"{GatewayEndpoints.ParseHostPort(o.AgentListen).Host}:0" : o.RelayListen.Trim();
        var (host, port) = GatewayEndpoints.ParseHostPort(address);
        var ip = host switch
        {
            "*" or "" => IPAddress.IPv6Any,
            _ when string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase) => IPAddress.Loopback,
            _ => IPAddress.Parse(host),
        };
        var listener = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (ip.Equals(IPAddress.IPv6Any))
            {
                listener.DualMode = true;
            }

            listener.Bind(new IPEndPoint(ip, port));
            listener.Listen(512);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            throw new IOException($"the relay endpoint cannot listen on {address} ({e.SocketErrorCode}): pick another --relay-listen, or 'off'", e);
        }

        _listener = listener;
        Port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        Log.Listening(logger, listener.LocalEndPoint!.ToString()!);
        _accepting = Task.Run(() => AcceptLoopAsync(listener, _stop.Token), CancellationToken.None);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            return;
        }

        await _stop.CancelAsync();
        _listener?.Dispose();
        pool.StopTaking();
        await _accepting.WaitAsync(cancellationToken).ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
    }

    /// <summary>Idempotent: the container disposes the listener as a singleton and as the hosted service.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stop.Cancel();
        _listener?.Dispose();
        _stop.Dispose();
    }

    private async Task AcceptLoopAsync(Socket listener, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync(stop);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException || stop.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                // A connection reset before it was accepted, or out of descriptors for a moment: keep accepting.
                Log.AcceptFailed(logger, e.SocketErrorCode.ToString());
                await Task.Delay(TimeSpan.FromMilliseconds(50), CancellationToken.None);
                continue;
            }

            _ = Task.Run(() => HandshakeAsync(socket, stop), CancellationToken.None);
        }
    }

    private async Task HandshakeAsync(Socket socket, CancellationToken stop)
    {
        var remote = socket.RemoteEndPoint?.ToString() ?? "?";
        RelayTunnel? parked = null;
        try
        {
            socket.NoDelay = true;
            // A peer that vanished without a FIN (a partition, a host gone) is found by TCP keepalive while parked.
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 30);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 10);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stop);
            timeout.CancelAfter(limits.Value.HandshakeTimeout);
            var fields = await ReadLineAsync(socket, timeout.Token);
            var (status, reason, claims) = await JudgeAsync(fields);
            if (claims is null)
            {
                Log.TunnelRefused(logger, remote, status, reason);
                await socket.SendAsync(RelayProtocol.Reply(RelayProtocol.TunnelMagic, status, reason), SocketFlags.None, timeout.Token);
                return;
            }

            // Answered first, parked second: a relay taking the tunnel at once must find the answer line sent before its go signal.
            // Should the pool refuse it then (the agent's maximum, or stopping), the close tells the agent to back off.
            await socket.SendAsync(RelayProtocol.Reply(RelayProtocol.TunnelMagic, RelayProtocol.Ok, claims.AgentId), SocketFlags.None, timeout.Token);
            var tunnel = new RelayTunnel(socket, claims.AgentId, claims.UserId);
            if (!pool.TryPark(tunnel))
            {
                Log.TunnelRefused(logger, remote, StatusCodes.Status503ServiceUnavailable, $"agent {claims.AgentId} has its maximum of parked relay tunnels here, or this gateway is stopping");
                return;
            }

            parked = tunnel;
            Log.TunnelParked(logger, claims.AgentId, pool.Parked);
        }
        catch (Exception e) when (e is SocketException or IOException or InvalidDataException or OperationCanceledException or ObjectDisposedException)
        {
            Log.HandshakeFailed(logger, remote, e.Message);
            parked?.Abort();
            parked = null;
        }
        finally
        {
            if (parked is null)
            {
                socket.Dispose();
            }
        }
    }

    private async Task<(int Status, string Reason, RbsTokenClaims? Claims)> JudgeAsync(string[] fields)
    {
        if (fields.Length != 1)
        {
            return (StatusCodes.Status400BadRequest, "expected RBS-TUNNEL/1 <join token>", null);
        }

        if (registry.Stopping)
        {
            return (StatusCodes.Status503ServiceUnavailable, "this gateway is draining; dial another replica", null);
        }

        var validation = await tokens.ValidateAsync(fields[0], RbsTokenKind.Join);
        if (validation.Claims is not { } claims)
        {
            // An expired token is refused here too: the agent's WebSocket tunnels renew it, and its relay dials retry.
            return (StatusCodes.Status401Unauthorized, $"join token rejected: {validation.Failure}", null);
        }

        if (!registry.CanRegister(claims.AgentId, claims.UserId))
        {
            return (StatusCodes.Status403Forbidden, $"agent {claims.AgentId} is registered by another user", null);
        }

        return (RelayProtocol.Ok, "OK", claims);
    }

    /// <summary>The first line, read in small receives so nothing after its LF is consumed (the agent sends nothing more until <see cref="RelayProtocol.Go"/>).</summary>
    private static async Task<string[]> ReadLineAsync(Socket socket, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(RelayProtocol.MaxLineBytes);
        try
        {
            var length = 0;
            while (true)
            {
                var read = await socket.ReceiveAsync(buffer.AsMemory(length, RelayProtocol.MaxLineBytes - length), SocketFlags.None, cancellationToken);
                if (read == 0)
                {
                    throw new IOException("the agent closed the connection during the relay handshake");
                }

                length += read;
                if (RelayProtocol.TryReadLine(new ReadOnlySequence<byte>(buffer, 0, length), RelayProtocol.TunnelMagic, out var fields, out var end))
                {
                    if (end.GetInteger() != length)
                    {
                        throw new InvalidDataException("the agent sent bytes after its relay handshake line");
                    }

                    return fields;
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 160, Level = LogLevel.Information, Message = "Relay endpoint listening on {Address} (agents' raw relay tunnels)")]
        public static partial void Listening(ILogger logger, string address);

        [LoggerMessage(EventId = 162, Level = LogLevel.Warning, Message = "Relay tunnel from {Remote} refused ({Status}): {Reason}")]
        public static partial void TunnelRefused(ILogger logger, string remote, int status, string reason);

        [LoggerMessage(EventId = 163, Level = LogLevel.Debug, Message = "Relay tunnel of agent {AgentId} parked ({Parked} parked in all)")]
        public static partial void TunnelParked(ILogger logger, string agentId, int parked);

        [LoggerMessage(EventId = 164, Level = LogLevel.Information, Message = "Relay tunnel handshake from {Remote} failed: {Reason}")]
        public static partial void HandshakeFailed(ILogger logger, string remote, string reason);

        [LoggerMessage(EventId = 165, Level = LogLevel.Warning, Message = "Relay endpoint accept failed ({Error}); accepting on")]
        public static partial void AcceptFailed(ILogger logger, string error);
    }
}
