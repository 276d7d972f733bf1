using System.Net;
using System.Net.Sockets;

namespace Rbs.Tests.Stacks.Replicas;

/// <summary>
/// A Kubernetes Service in miniature: a loopback TCP relay that sends each new connection to the next backend in turn,
/// skipping backends that refuse (a stopped replica), as kube-proxy does once a pod left the endpoints. Connections
/// already relayed stay on their backend until either side closes.
/// </summary>
internal sealed class RoundRobinRelay : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly List<TcpClient> _clients = [];
    private readonly List<IPEndPoint> _backends = [];
    private readonly Task _acceptLoop;
    private int _next;

    public RoundRobinRelay()
    {
        _listener.Start();
        _acceptLoop = AcceptLoopAsync();
    }

    public string Address => $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    public void AddBackend(string address)
    {
        var uri = new Uri(address);
        lock (_backends)
        {
            _backends.Add(new IPEndPoint(IPAddress.Parse(uri.Host), uri.Port));
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        lock (_clients)
        {
            foreach (var client in _clients)
            {
                client.Dispose();
            }
        }

        await _acceptLoop.ContinueWith(_ => { }, TaskScheduler.Default);
        _stop.Dispose();
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
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }

            _ = RelayAsync(inbound);
        }
    }

    private async Task RelayAsync(TcpClient inbound)
    {
        IPEndPoint[] order;
        lock (_backends)
        {
            var start = _next++;
            order = [.. Enumerable.Range(0, _backends.Count).Select(i => _backends[(start + i) % _backends.Count])];
        }

        foreach (var backend in order)
        {
            var outbound = new TcpClient();
            try
            {
                await outbound.ConnectAsync(backend, _stop.Token);
            }
            catch (Exception)
            {
                outbound.Dispose();
                continue;
            }

            lock (_clients)
            {
                _clients.Add(inbound);
                _clients.Add(outbound);
            }

            _ = PumpAsync(inbound, outbound);
            _ = PumpAsync(outbound, inbound);
            return;
        }

        inbound.Dispose();
    }

    private async Task PumpAsync(TcpClient from, TcpClient to)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            var source = from.GetStream();
            var target = to.GetStream();
            while (true)
            {
                var n = await source.ReadAsync(buffer, _stop.Token);
                if (n == 0)
                {
                    break;
                }

                await target.WriteAsync(buffer.AsMemory(0, n), _stop.Token);
            }
        }
        catch (Exception)
        {
            // Either side closed; tear the pair down below.
        }

        from.Dispose();
        to.Dispose();
        lock (_clients)
        {
            _clients.Remove(from);
            _clients.Remove(to);
        }
    }
}
