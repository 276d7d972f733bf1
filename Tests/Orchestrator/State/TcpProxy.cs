using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// A loopback TCP forwarder in front of the real PostgreSQL server, so a test can take "the database"
/// away from one store (refuse new connections and reset open ones) and bring it back on the same
/// port, without stopping the shared cluster other tests use.
/// </summary>
internal sealed class TcpProxy(IPEndPoint target) : IAsyncDisposable
{
    private readonly ConcurrentDictionary<Socket, byte> _sockets = new();
    private TcpListener? _listener;
    private CancellationTokenSource? _stop;
    private Task _acceptLoop = Task.CompletedTask;
    private int _accepted;
    private int _lostReplies;

    public int Port { get; private set; }

    public int AcceptedConnections => _accepted;

    /// <summary>
    /// When set, the next server reply containing this ASCII text (e.g. the command tag "INSERT 0 1") is
    /// swallowed and both sides are reset: the statement committed but its acknowledgement was lost.
    /// Fires once, then clears itself.
    /// </summary>
    public string? LoseReplyContaining { get; set; }

    public int LostReplies => _lostReplies;

    /// <summary>Listens (again) on <see cref="Port"/>, or an ephemeral port the first time.</summary>
    public void Start()
    {
        var listener = new TcpListener(IPAddress.Loopback, Port);
        listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        listener.Start();
        Port = ((IPEndPoint)listener.LocalEndpoint).Port;
        _listener = listener;
        _stop = new CancellationTokenSource();
        _acceptLoop = AcceptLoopAsync(listener, _stop.Token);
    }

    /// <summary>Stops listening and resets every forwarded connection: the database is "gone".</summary>
    public async Task StopAsync()
    {
        if (_listener is null)
        {
            return;
        }

        await _stop!.CancelAsync();
        _listener.Stop();
        _listener = null;
        foreach (var socket in _sockets.Keys)
        {
            Reset(socket);
        }

        _sockets.Clear();
        try
        {
            await _acceptLoop;
        }
        catch (OperationCanceledException)
        {
        }

        _stop.Dispose();
    }

    public async ValueTask DisposeAsync() => await StopAsync();

    private async Task AcceptLoopAsync(TcpListener listener, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptSocketAsync(ct);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            Interlocked.Increment(ref _accepted);
            _ = ForwardAsync(client, ct);
        }
    }

    private async Task ForwardAsync(Socket client, CancellationToken ct)
    {
        var server = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _sockets.TryAdd(client, 0);
        _sockets.TryAdd(server, 0);
        try
        {
            await server.ConnectAsync(target, ct);
            await Task.WhenAny(PumpAsync(client, server, serverReplies: false, ct), PumpAsync(server, client, serverReplies: true, ct));
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
        finally
        {
            _sockets.TryRemove(client, out _);
            _sockets.TryRemove(server, out _);
            client.Dispose();
            server.Dispose();
        }
    }

    private async Task PumpAsync(Socket from, Socket to, bool serverReplies, CancellationToken ct)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                var read = await from.ReceiveAsync(buffer, SocketFlags.None, ct);
                if (read == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }

                if (serverReplies && LoseReplyContaining is { } marker
                    && System.Text.Encoding.ASCII.GetString(buffer, 0, read).Contains(marker, StringComparison.Ordinal))
                {
                    LoseReplyContaining = null;
                    Interlocked.Increment(ref _lostReplies);
                    Reset(from);
                    Reset(to);
                    return;
                }

                await to.SendAsync(buffer.AsMemory(0, read), SocketFlags.None, ct);
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Closes with RST, like a crashed server or a dropped route; the socket may already be gone.</summary>
    private static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception ex) when (ex is ObjectDisposedException or SocketException)
        {
        }

        socket.Dispose();
    }
}
