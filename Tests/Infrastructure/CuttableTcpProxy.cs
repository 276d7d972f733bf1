using System.Net;
using System.Net.Sockets;

namespace Rbs.Tests.Infrastructure;

/// <summary>
/// A loopback TCP proxy the test controls: <see cref="CutAll"/> resets every connection through it (a network that
/// drops), and while <see cref="Refuse"/> is in force new connections are reset as soon as they arrive (a network
/// that is still down) until <see cref="Accept"/>.
/// </summary>
internal sealed class CuttableTcpProxy : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _target;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<(TcpClient Inbound, TcpClient Outbound)> _connections = [];
    private readonly Task _acceptLoop;
    private volatile bool _refusing;

    public CuttableTcpProxy(IPEndPoint target)
    {
        _target = target;
        _listener.Start();
        _acceptLoop = AcceptLoopAsync();
    }

    public CuttableTcpProxy(string targetAddress)
        : this(ParseLoopback(targetAddress))
    {
    }

    /// <summary>http://127.0.0.1:port of the proxy.</summary>
    public string Address => $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    /// <summary>Connections accepted (and relayed) so far.</summary>
    public int Accepted { get; private set; }

    /// <summary>Connections reset on arrival while refusing.</summary>
    public int Refused { get; private set; }

    /// <summary>Resets every open connection (RST both ways); returns how many there were.</summary>
    public int CutAll()
    {
        lock (_connections)
        {
            foreach (var (inbound, outbound) in _connections)
            {
                Reset(inbound);
                Reset(outbound);
            }

            var count = _connections.Count;
            _connections.Clear();
            return count;
        }
    }

    public void Refuse() => _refusing = true;

    public void Accept() => _refusing = false;

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        CutAll();
        await _acceptLoop.ContinueWith(_ => { }, TaskScheduler.Default);
        _stop.Dispose();
    }

    private static IPEndPoint ParseLoopback(string address)
    {
        var uri = new Uri(address);
        return new IPEndPoint(IPAddress.Loopback, uri.Port);
    }

    private static void Reset(TcpClient client)
    {
        try
        {
            client.Client.LingerState = new LingerOption(true, 0);
            client.Dispose();
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient inbound;
            try
            {
                inbound = await _listener.AcceptTcpClientAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            if (_refusing)
            {
                Refused++;
                Reset(inbound);
                continue;
            }

            var outbound = new TcpClient();
            try
            {
                await outbound.ConnectAsync(_target, _stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException)
            {
                Reset(inbound);
                outbound.Dispose();
                continue;
            }

            inbound.NoDelay = true;
            outbound.NoDelay = true;
            lock (_connections)
            {
                _connections.Add((inbound, outbound));
                Accepted++;
            }

            _ = RelayAsync(inbound, outbound);
        }
    }

    private async Task RelayAsync(TcpClient inbound, TcpClient outbound)
    {
        try
        {
            using var both = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            var a = CopyAsync(inbound.GetStream(), outbound.GetStream(), both.Token);
            var b = CopyAsync(outbound.GetStream(), inbound.GetStream(), both.Token);
            await Task.WhenAny(a, b);
            await both.CancelAsync();
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException or SocketException)
        {
        }
        finally
        {
            lock (_connections)
            {
                _connections.Remove((inbound, outbound));
            }

            Reset(inbound);
            Reset(outbound);
        }
    }

    private static async Task CopyAsync(Stream from, Stream to, CancellationToken cancellationToken)
    {
        try
        {
            await from.CopyToAsync(to, cancellationToken);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException or SocketException)
        {
        }
    }
}
