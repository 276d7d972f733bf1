using System.Net;
using System.Net.Sockets;

namespace Rbs.Tests.Gateway;

/// <summary>
/// A loopback TCP relay that can "freeze": bytes stop flowing but no connection is closed — the silent
/// half-dead link (NAT timeout, dead node) that only keepalive pings can detect.
/// </summary>
internal sealed class FreezableTcpRelay : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _target;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<TcpClient> _clients = [];
    private readonly Task _acceptLoop;
    private volatile TaskCompletionSource _flowing = NewOpenGate();

    public FreezableTcpRelay(IPEndPoint target)
    {
        _target = target;
        _listener.Start();
        _acceptLoop = AcceptLoopAsync();
    }

    public string Address => $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    public void Freeze() => _flowing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Thaw() => _flowing.TrySetResult();

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        Thaw();
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

    private static TaskCompletionSource NewOpenGate()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        gate.SetResult();
        return gate;
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

            var outbound = new TcpClient();
            try
            {
                await _flowing.Task.WaitAsync(_stop.Token);
                await outbound.ConnectAsync(_target, _stop.Token);
            }
            catch (Exception)
            {
                inbound.Dispose();
                outbound.Dispose();
                continue;
            }

            lock (_clients)
            {
                _clients.Add(inbound);
                _clients.Add(outbound);
            }

            _ = PumpAsync(inbound.GetStream(), outbound.GetStream(), inbound, outbound);
            _ = PumpAsync(outbound.GetStream(), inbound.GetStream(), outbound, inbound);
        }
    }

    private async Task PumpAsync(NetworkStream from, NetworkStream to, TcpClient a, TcpClient b)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                var n = await from.ReadAsync(buffer, _stop.Token);
                if (n == 0)
                {
                    break;
                }

                // Frozen: hold the bytes, keep both connections open.
                await _flowing.Task.WaitAsync(_stop.Token);
                await to.WriteAsync(buffer.AsMemory(0, n), _stop.Token);
            }
        }
        catch (Exception)
        {
            // Either side closed; tear the pair down below.
        }

        a.Dispose();
        b.Dispose();
    }
}
