using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Hosting;
using Rbs.Shared.Text;
using Rbs.Shared.Tokens;
using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Relay;

/// <summary>
/// The relay on the public endpoint: a connection whose first bytes are <c>RBS-RELAY/1 &lt;route&gt; &lt;session token&gt;</c>
/// (<see cref="RelayProtocol"/>) is checked once — the session token must be valid and name the route's agent, as on
/// every forwarded stream — and then spliced byte for byte onto one of that agent's parked relay tunnels, so the
/// client's HTTP/2 connection ends at the agent's Kestrel. The gateway copies bytes: the agent's output is read from
/// its socket straight into the client connection's output pipe, in reads of up to
/// <see cref="GatewayOptions.RelayBufferSize"/>, and the client's bytes go to the agent's socket in gathered sends.
/// Any other connection passes on untouched (HTTP/2 for jbazel's per-stream path, or a browser). A refusal is a status
/// line and a close, after which the client falls back to the per-stream path, whose answers are gRPC statuses. A
/// relayed connection ends when either side closes, when its session token expires (the client reconnects with a
/// fresh one), or when the gateway stops.
/// </summary>
internal sealed partial class ClientRelay(
    RelayTunnelPool pool,
    RelayTunnelListener listener,
    RbsTokenService tokens,
    RelayMetrics metrics,
    IOptions<GatewayOptions> options,
    IOptions<ServerLimitsOptions> limits,
    TimeProvider timeProvider,
    ILogger<ClientRelay> logger) : IDisposable
{
    /// <summary>How long the other direction may go on once one has ended, before the relay cuts both.</summary>
    private static readonly TimeSpan s_closeGrace = TimeSpan.FromSeconds(5);

    private readonly CancellationTokenSource _stopping = new();
    private int _active;

    /// <summary>Connections relayed now.</summary>
    public int ActiveConnections => Volatile.Read(ref _active);

    /// <summary>Adds the relay to a public listener: first on a cleartext one, right after TLS on a TLS one.</summary>
    public static void Use(ListenOptions listen) =>
        listen.Use(next =>
        {
            var relay = listen.ApplicationServices.GetRequiredService<ClientRelay>();
            return connection => relay.OnConnectionAsync(connection, next);
        });

    /// <summary>Gateway shutdown or the end of a replica's drain: every relayed connection is cut (clients reattach elsewhere).</summary>
    public void CutAll() => _stopping.Cancel();

    public void Dispose() => _stopping.Cancel();

    private async Task OnConnectionAsync(ConnectionContext connection, ConnectionDelegate next)
    {
        if (listener.Port is null)
        {
            await next(connection);
            return;
        }

        string[]? fields;
        using (var handshake = new CancellationTokenSource(limits.Value.HandshakeTimeout, timeProvider))
        {
            try
            {
                fields = await ReadRequestAsync(connection.Transport.Input, handshake.Token);
            }
            catch (OperationCanceledException)
            {
                connection.Abort(new ConnectionAbortedException("no complete request within the handshake timeout"));
                return;
            }
            catch (InvalidDataException e)
            {
                await RefuseAsync(connection, StatusCodes.Status400BadRequest, e.Message);
                return;
            }
        }

        if (fields is null)
        {
            await next(connection);
            return;
        }

        ConnectionGuard.HandshakeCompleted(connection);
        await RelayAsync(connection, fields);
    }

    /// <summary>
    /// Null (nothing consumed) when the connection does not start with the relay's magic — decided as soon as a byte
    /// differs, so an HTTP/2 client never waits here; else the request line's fields (the line consumed).
    /// </summary>
    private static async Task<string[]?> ReadRequestAsync(PipeReader input, CancellationToken cancellationToken)
    {
        var magic = RelayProtocol.ClientMagic.ToArray();
        while (true)
        {
            var result = await input.ReadAsync(cancellationToken);
            var buffer = result.Buffer;
            var prefix = (int)Math.Min(buffer.Length, magic.Length);
            if (!buffer.Slice(0, prefix).ToArray().AsSpan().SequenceEqual(magic.AsSpan(0, prefix)) || (result.IsCompleted && buffer.Length < magic.Length))
            {
                input.AdvanceTo(buffer.Start);
                return null;
            }

            if (buffer.Length >= magic.Length && RelayProtocol.TryReadLine(buffer, magic, out var fields, out var end))
            {
                input.AdvanceTo(end);
                return fields;
            }

            if (result.IsCompleted)
            {
                throw new InvalidDataException("the connection closed mid relay request");
            }

            input.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    private async Task RelayAsync(ConnectionContext connection, string[] fields)
    {
        if (fields.Length != 2)
        {
            await RefuseAsync(connection, StatusCodes.Status400BadRequest, "expected RBS-RELAY/1 <agent route> <session token>");
            return;
        }

        var route = fields[0];
        var shown = UntrustedText.Echo(route);
        var validation = await tokens.ValidateAsync(fields[1], RbsTokenKind.Session);
        if (validation.Claims is not { } claims)
        {
            await RefuseAsync(connection, StatusCodes.Status401Unauthorized, $"session token rejected for agent {shown}: {validation.Failure}");
            return;
        }

        if (!RbsTokenService.FixedTimeEquals(claims.AgentId, route))
        {
            await RefuseAsync(connection, StatusCodes.Status403Forbidden, $"the session token does not grant access to agent {shown}");
            return;
        }

        if (Interlocked.Increment(ref _active) > options.Value.MaxRelayConnections)
        {
            Interlocked.Decrement(ref _active);
            await RefuseAsync(connection, StatusCodes.Status503ServiceUnavailable, $"the gateway relays its maximum of {options.Value.MaxRelayConnections} connections");
            return;
        }

        try
        {
            RelayTunnel? tunnel;
            try
            {
                tunnel = await pool.TakeAsync(claims.AgentId, claims.UserId, options.Value.RelayAcquireTimeout, connection.ConnectionClosed);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            if (tunnel is null)
            {
                await RefuseAsync(connection, StatusCodes.Status503ServiceUnavailable,
                    $"agent {shown} has no relay tunnel here within {options.Value.RelayAcquireTimeout.TotalSeconds:0.#} s");
                return;
            }

            await using (tunnel)
            {
                await SpliceAsync(connection, tunnel, claims);
            }
        }
        finally
        {
            Interlocked.Decrement(ref _active);
        }
    }

    private async Task SpliceAsync(ConnectionContext connection, RelayTunnel tunnel, RbsTokenClaims claims)
    {
        var output = connection.Transport.Output;
        // Cleartext: the agent's output goes from socket to socket, as a byte relay does (one receive and one send per
        // read, no pipe and no thread hop between them). Kestrel's transport still reads the client's side, and writes
        // nothing: the relay was the first middleware, so the connection's output pipe is empty and stays so.
        var clientSocket = connection.Features.Get<ITlsHandshakeFeature>() is null ? connection.Features.Get<IConnectionSocketFeature>()?.Socket : null;
        var reply = RelayProtocol.Reply(RelayProtocol.ClientMagic, RelayProtocol.Ok, "OK");
        if (clientSocket is not null)
        {
            await SendAllAsync(clientSocket, reply, connection.ConnectionClosed);
        }
        else
        {
            await output.WriteAsync(reply);
        }

        metrics.Relayed();
        Log.Relaying(logger, connection.ConnectionId, claims.AgentId);
        using var cut = CancellationTokenSource.CreateLinkedTokenSource(connection.ConnectionClosed, _stopping.Token);
        // The session token admitted the connection; it carries streams no longer than the token is valid.
        var left = claims.ExpiresAt - timeProvider.GetUtcNow();
        var expiry = left < TimeSpan.MaxValue / 2 ? new CancellationTokenSource(left > TimeSpan.Zero ? left : TimeSpan.Zero, timeProvider) : null;
        using var expiryLink = expiry?.Token.Register(static state => ((CancellationTokenSource)state!).Cancel(), cut);

        var socket = tunnel.Socket;
        var up = ClientToAgentAsync(connection.Transport.Input, socket, cut.Token);
        var down = clientSocket is not null ? AgentToClientSocketAsync(socket, clientSocket, cut.Token) : AgentToClientAsync(socket, output, cut.Token);
        var first = await Task.WhenAny(up, down);
        // One direction ended (a close, or a failure): pass the end on and let the other finish what it carries.
        if (first == up)
        {
            TryShutdown(socket);
        }
        else if (clientSocket is not null)
        {
            TryShutdown(clientSocket);
        }
        else
        {
            await output.CompleteAsync();
        }

        var both = Task.WhenAll(up, down);
        try
        {
            await both.WaitAsync(s_closeGrace, timeProvider);
        }
        catch (TimeoutException)
        {
            await cut.CancelAsync();
            TryShutdown(socket, SocketShutdown.Both);
        }

        await both.ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
        var reason = expiry?.IsCancellationRequested == true ? "the session token expired"
            : _stopping.IsCancellationRequested ? "the gateway stopped"
            : first == up ? "the client closed" : "the agent closed";
        expiry?.Dispose();
        Log.RelayEnded(logger, connection.ConnectionId, claims.AgentId, reason);
    }

    /// <summary>The client's bytes to the agent: each read's segments in one gathered send.</summary>
    private async Task ClientToAgentAsync(PipeReader input, Socket socket, CancellationToken cancellationToken)
    {
        var segments = new List<ArraySegment<byte>>();
        try
        {
            while (true)
            {
                var result = await input.ReadAsync(cancellationToken);
                var buffer = result.Buffer;
                if (!buffer.IsEmpty)
                {
                    await SendAsync(socket, buffer, segments, cancellationToken);
                    metrics.Sent(RelayMetrics.ToAgent, buffer.Length);
                }

                input.AdvanceTo(buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or ObjectDisposedException or ConnectionResetException)
        {
        }
        finally
        {
            await input.CompleteAsync();
        }
    }

    private static async ValueTask SendAsync(Socket socket, ReadOnlySequence<byte> buffer, List<ArraySegment<byte>> segments, CancellationToken cancellationToken)
    {
        if (buffer.IsSingleSegment)
        {
            await SendAllAsync(socket, buffer.First, cancellationToken);
            return;
        }

        segments.Clear();
        foreach (var memory in buffer)
        {
            segments.Add(MemoryMarshal.TryGetArray(memory, out var segment) ? segment : new ArraySegment<byte>(memory.ToArray()));
        }

        // Socket.SendAsync(IList) sends everything or fails; it takes no token, so a cut closes the socket instead.
        await socket.SendAsync(segments, SocketFlags.None).WaitAsync(cancellationToken);
    }

    /// <summary>The agent's bytes to a cleartext client: one buffer of <see cref="GatewayOptions.RelayBufferSize"/>, socket to socket.</summary>
    private async Task AgentToClientSocketAsync(Socket agent, Socket client, CancellationToken cancellationToken)
    {
        var size = options.Value.RelayBufferSize;
        var buffer = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            while (true)
            {
                var read = await agent.ReceiveAsync(buffer.AsMemory(0, size), SocketFlags.None, cancellationToken);
                if (read == 0)
                {
                    return;
                }

                await SendAllAsync(client, buffer.AsMemory(0, read), cancellationToken);
                metrics.Sent(RelayMetrics.ToClient, read);
            }
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static async ValueTask SendAllAsync(Socket socket, ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken)
    {
        while (!bytes.IsEmpty)
        {
            bytes = bytes[await socket.SendAsync(bytes, SocketFlags.None, cancellationToken)..];
        }
    }

    /// <summary>The agent's bytes to a TLS client: received straight into the (TLS) output pipe's memory, flushed read by read.</summary>
    private async Task AgentToClientAsync(Socket socket, PipeWriter output, CancellationToken cancellationToken)
    {
        var size = options.Value.RelayBufferSize;
        try
        {
            while (true)
            {
                var memory = output.GetMemory(size);
                var read = await socket.ReceiveAsync(memory[..Math.Min(size, memory.Length)], SocketFlags.None, cancellationToken);
                if (read == 0)
                {
                    return;
                }

                output.Advance(read);
                metrics.Sent(RelayMetrics.ToClient, read);
                var flush = await output.FlushAsync(cancellationToken);
                if (flush.IsCompleted || flush.IsCanceled)
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or ObjectDisposedException or InvalidOperationException or ConnectionResetException)
        {
            // InvalidOperationException: the output was completed by the other direction's end.
        }
    }

    private static void TryShutdown(Socket socket, SocketShutdown how = SocketShutdown.Send)
    {
        try
        {
            socket.Shutdown(how);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    private async Task RefuseAsync(ConnectionContext connection, int status, string reason)
    {
        metrics.Refused(status);
        Log.Refused(logger, connection.ConnectionId, status, reason);
        try
        {
            await connection.Transport.Output.WriteAsync(RelayProtocol.Reply(RelayProtocol.ClientMagic, status, reason));
            await connection.Transport.Output.CompleteAsync();
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ConnectionResetException)
        {
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 166, Level = LogLevel.Debug, Message = "Connection {ConnectionId} relayed to agent {AgentId}")]
        public static partial void Relaying(ILogger logger, string connectionId, string agentId);

        [LoggerMessage(EventId = 167, Level = LogLevel.Debug, Message = "Relay of connection {ConnectionId} to agent {AgentId} ended: {Reason}")]
        public static partial void RelayEnded(ILogger logger, string connectionId, string agentId, string reason);

        [LoggerMessage(EventId = 168, Level = LogLevel.Information, Message = "Relay request on connection {ConnectionId} refused ({Status}): {Reason}; the client forwards its streams one by one instead")]
        public static partial void Refused(ILogger logger, string connectionId, int status, string reason);
    }
}
