using System.Net.Sockets;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Relay;

/// <summary>
/// The agents' parked relay tunnels, per agent id (at most <see cref="GatewayOptions.RelayTunnelsPerAgent"/> each). A parked
/// tunnel keeps a zero-byte receive pending: the agent sends nothing while parked, so its completion means the agent
/// closed it or the socket failed, and the tunnel leaves the pool at once. A relay takes the newest tunnel, tells the
/// agent <see cref="RelayProtocol.Go"/> and waits for <see cref="RelayProtocol.Ready"/> (the liveness probe, bounded by
/// <see cref="GatewayOptions.TunnelProbeTimeout"/>); a tunnel that fails it is dropped and the next one tried.
/// </summary>
internal sealed partial class RelayTunnelPool(IOptions<GatewayOptions> options, TimeProvider timeProvider, ILogger<RelayTunnelPool> logger) : IDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Agent> _agents = new(StringComparer.Ordinal);
    private bool _stopping;
    private int _parked;

    /// <summary>Tunnels parked now, over all agents.</summary>
    public int Parked => Volatile.Read(ref _parked);

    /// <summary>
    /// Parks <paramref name="tunnel"/>; false (the caller refuses and closes it) when its agent has its maximum parked, the
    /// id is parked by another user, or the gateway is stopping.
    /// </summary>
    public bool TryPark(RelayTunnel tunnel)
    {
        lock (_lock)
        {
            if (_stopping)
            {
                return false;
            }

            if (!_agents.TryGetValue(tunnel.AgentId, out var agent))
            {
                agent = new Agent();
                _agents[tunnel.AgentId] = agent;
            }

            agent.UserId ??= tunnel.UserId;
            if (!string.Equals(agent.UserId, tunnel.UserId, StringComparison.Ordinal) || agent.Parked.Count >= options.Value.RelayTunnelsPerAgent)
            {
                return false;
            }

            agent.Parked.Add(tunnel);
            _parked++;
            var added = agent.Added;
            agent.Added = new(TaskCreationOptions.RunContinuationsAsynchronously);
            added.TrySetResult();
        }

        tunnel.WatchWhileParked(Lost);
        return true;
    }

    /// <summary>
    /// A live tunnel of <paramref name="agentId"/> (owned by <paramref name="userId"/>) that answered the probe, now the
    /// caller's; waits up to <paramref name="wait"/> for one to be parked. Null when none came in time.
    /// </summary>
    public async Task<RelayTunnel?> TakeAsync(string agentId, string userId, TimeSpan wait, CancellationToken cancellationToken)
    {
        var deadline = timeProvider.GetTimestamp() + (long)(wait.TotalSeconds * timeProvider.TimestampFrequency);
        while (true)
        {
            RelayTunnel? tunnel = null;
            Task added;
            lock (_lock)
            {
                if (_stopping)
                {
                    return null;
                }

                if (!_agents.TryGetValue(agentId, out var agent))
                {
                    agent = new Agent();
                    _agents[agentId] = agent;
                }

                if (agent.UserId is { } owner && !string.Equals(owner, userId, StringComparison.Ordinal))
                {
                    return null;
                }

                if (agent.Parked.Count > 0)
                {
                    // The newest: the likeliest to be alive, and the older ones stay parked for their watches to judge.
                    tunnel = agent.Parked[^1];
                    agent.Parked.RemoveAt(agent.Parked.Count - 1);
                    _parked--;
                    if (agent.Parked.Count == 0 && agent.Waiters == 0)
                    {
                        _agents.Remove(agentId);
                    }
                }

                added = agent.Added.Task;
                if (tunnel is null)
                {
                    agent.Waiters++;
                }
            }

            if (tunnel is not null)
            {
                if (await tunnel.TryClaimAsync(options.Value.TunnelProbeTimeout, cancellationToken))
                {
                    return tunnel;
                }

                Log.ProbeFailed(logger, agentId);
                await tunnel.DisposeAsync();
                continue;
            }

            var left = TimeSpan.FromSeconds((deadline - timeProvider.GetTimestamp()) / (double)timeProvider.TimestampFrequency);
            if (left <= TimeSpan.Zero)
            {
                return null;
            }

            try
            {
                await added.WaitAsync(left, timeProvider, cancellationToken);
            }
            catch (TimeoutException)
            {
                return null;
            }
            finally
            {
                Forget(agentId);
            }
        }
    }

    /// <summary>A draining replica or a stopping gateway: no more tunnels are parked or taken, and the parked ones close.</summary>
    public void StopTaking()
    {
        List<RelayTunnel> parked;
        lock (_lock)
        {
            _stopping = true;
            parked = [.. _agents.Values.SelectMany(a => a.Parked)];
            foreach (var agent in _agents.Values)
            {
                agent.Parked.Clear();
            }

            _parked = 0;
        }

        foreach (var tunnel in parked)
        {
            tunnel.Abort();
        }
    }

    public void Dispose() => StopTaking();

    /// <summary>A waiter is done with <paramref name="agentId"/>: an entry with nothing parked and nobody waiting goes.</summary>
    private void Forget(string agentId)
    {
        lock (_lock)
        {
            if (_agents.TryGetValue(agentId, out var agent) && --agent.Waiters == 0 && agent.Parked.Count == 0)
            {
                _agents.Remove(agentId);
            }
        }
    }

    /// <summary>A parked tunnel's watch saw it close: drop it (and the agent's entry once it has none).</summary>
    private void Lost(RelayTunnel tunnel)
    {
        lock (_lock)
        {
            if (_agents.TryGetValue(tunnel.AgentId, out var agent) && agent.Parked.Remove(tunnel))
            {
                _parked--;
                if (agent.Parked.Count == 0 && agent.Waiters == 0)
                {
                    _agents.Remove(tunnel.AgentId);
                }
            }
        }

        tunnel.Abort();
    }

    private sealed class Agent
    {
        /// <summary>The user whose join token parked the agent's first tunnel; every later one must name the same.</summary>
        public string? UserId { get; set; }

        /// <summary>Relays waiting for a tunnel of this agent (the entry stays while there are any).</summary>
        public int Waiters { get; set; }

        public List<RelayTunnel> Parked { get; } = [];

        /// <summary>Completes when a tunnel is parked (then replaced): what a waiting relay waits on.</summary>
        public TaskCompletionSource Added { get; set; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 161, Level = LogLevel.Information, Message = "A parked relay tunnel of agent {AgentId} did not answer the go signal; dropped, trying the next")]
        public static partial void ProbeFailed(ILogger logger, string agentId);
    }
}

/// <summary>One agent's raw relay tunnel: the accepted socket, whose agent and user the join token named.</summary>
internal sealed class RelayTunnel(Socket socket, string agentId, string userId) : IAsyncDisposable
{
    private readonly CancellationTokenSource _watchStop = new();
    private Task? _watch;
    private int _aborted;

    public Socket Socket => socket;

    public string AgentId => agentId;

    public string UserId => userId;

    /// <summary>Keeps a zero-byte receive pending while parked; when it completes (the agent closed, or the socket failed) <paramref name="lost"/> runs.</summary>
    public void WatchWhileParked(Action<RelayTunnel> lost) =>
        _watch = Task.Run(async () =>
        {
            try
            {
                await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, _watchStop.Token);
            }
            catch (OperationCanceledException) when (_watchStop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }

            lost(this);
        });

    /// <summary>Ends the watch, sends <see cref="RelayProtocol.Go"/> and waits for <see cref="RelayProtocol.Ready"/>: true when the agent answered in time.</summary>
    public async Task<bool> TryClaimAsync(TimeSpan probeTimeout, CancellationToken cancellationToken)
    {
        await _watchStop.CancelAsync();
        if (_watch is not null)
        {
            await _watch;
        }

        if (Volatile.Read(ref _aborted) != 0)
        {
            return false;
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(probeTimeout);
        try
        {
            var answer = new byte[1];
            await socket.SendAsync(new[] { RelayProtocol.Go }, SocketFlags.None, timeout.Token);
            return await socket.ReceiveAsync(answer, SocketFlags.None, timeout.Token) == 1 && answer[0] == RelayProtocol.Ready;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            return false;
        }
    }

    /// <summary>Closes the socket at once (a reset, not a graceful close: the agent redials).</summary>
    public void Abort()
    {
        if (Interlocked.Exchange(ref _aborted, 1) == 0)
        {
            _watchStop.Cancel();
            socket.Close(0);
        }
    }

    public ValueTask DisposeAsync()
    {
        Abort();
        _watchStop.Dispose();
        return ValueTask.CompletedTask;
    }
}
