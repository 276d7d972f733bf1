using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Tunnel;

/// <summary>
/// One agent's live tunnels and which of them are idle: the one record of both. A tunnel is live from
/// <see cref="Add"/> until <see cref="Remove"/> (its WebSocket request ended), and idle exactly while it is in the
/// idle list. Whoever takes a tunnel out of the idle list owns it: <see cref="TakeAsync"/> for a new inner HTTP/2
/// connection, or <see cref="TryEvictIdle"/> when the idle watch finds it closed; the lock decides who wins.
/// The idle list is newest first (an older idle tunnel is the likelier one to have died unnoticed); callers that
/// find it empty wait in arrival order and are handed the next tunnel that arrives.
/// </summary>
internal sealed class TunnelPool
{
    private readonly Lock _lock = new();
    private readonly HashSet<GatewayTunnel> _live = [];
    private readonly LinkedList<GatewayTunnel> _idle = new();
    private readonly LinkedList<TaskCompletionSource<GatewayTunnel>> _waiters = new();

    /// <summary>Live and idle tunnels, read together (idle ≤ live).</summary>
    public (int Live, int Idle) Counts
    {
        get
        {
            lock (_lock)
            {
                return (_live.Count, _idle.Count);
            }
        }
    }

    /// <summary>A copy of the live tunnels.</summary>
    public GatewayTunnel[] Live()
    {
        lock (_lock)
        {
            return [.. _live];
        }
    }

    /// <summary>Adds a new tunnel as idle, or hands it straight to the longest-waiting caller. Returns the live count.</summary>
    public int Add(GatewayTunnel tunnel)
    {
        lock (_lock)
        {
            _live.Add(tunnel);
            GiveOrKeepIdle(tunnel);
            return _live.Count;
        }
    }

    /// <summary>The tunnel's WebSocket request ended: it is neither live nor idle any more. Returns the live count left.</summary>
    public int Remove(GatewayTunnel tunnel)
    {
        lock (_lock)
        {
            _live.Remove(tunnel);
            _idle.Remove(tunnel);
            return _live.Count;
        }
    }

    /// <summary>Takes the tunnel out of the idle list if it is still there; true when the caller now owns it.</summary>
    public bool TryEvictIdle(GatewayTunnel tunnel)
    {
        lock (_lock)
        {
            return _idle.Remove(tunnel);
        }
    }

    /// <summary>Takes the newest idle tunnel, waiting for one when there is none.</summary>
    public async ValueTask<GatewayTunnel> TakeAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        LinkedListNode<TaskCompletionSource<GatewayTunnel>> waiter;
        lock (_lock)
        {
            if (_idle.First is { } newest)
            {
                _idle.RemoveFirst();
                return newest.Value;
            }

            waiter = _waiters.AddLast(new TaskCompletionSource<GatewayTunnel>(TaskCreationOptions.RunContinuationsAsynchronously));
        }

        try
        {
            return await waiter.Value.Task.WaitAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            GatewayTunnel handed;
            lock (_lock)
            {
                if (waiter.List is not null)
                {
                    _waiters.Remove(waiter);
                    throw;
                }

                // A tunnel was handed over just as the wait was cancelled: it stays idle for the next caller.
                handed = waiter.Value.Task.Result;
                if (_live.Contains(handed))
                {
                    GiveOrKeepIdle(handed);
                }
            }

            throw;
        }
    }

    private void GiveOrKeepIdle(GatewayTunnel tunnel)
    {
        while (_waiters.First is { } waiter)
        {
            _waiters.RemoveFirst();
            if (waiter.Value.TrySetResult(tunnel))
            {
                return;
            }
        }

        _idle.AddFirst(tunnel);
    }
}

/// <summary>One agent WebSocket on the gateway; <see cref="TunnelPool"/> records whether it is idle.</summary>
internal sealed class GatewayTunnel(AgentTunnels agent, WebSocketTunnelStream stream)
{
    public AgentTunnels Agent => agent;

    public WebSocketTunnelStream Stream => stream;
}
