using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Protocol;

namespace Rbs.Gateway.Replicas;

/// <summary>
/// This replica's view of the live gateway replicas, which agents read (<c>GET /tunnel/v1/replicas</c>) to keep tunnels
/// to every one of them. Filled by <see cref="ReplicaHeartbeatService"/> from the orchestrator's state store; it always
/// holds this replica itself unless it is draining (the store may not have its first heartbeat yet). Disabled (and
/// empty) on a single gateway (<see cref="GatewayOptions.AdvertiseAgentAddress"/> not set).
/// </summary>
internal sealed class GatewayReplicaSet
{
    private readonly Lock _lock = new();
    private IReadOnlyList<GatewayReplicaEntry> _others = [];
    private GatewayReplicaList _current;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _draining;

    public GatewayReplicaSet(IOptions<GatewayOptions> options)
    {
        var o = options.Value;
        Enabled = o.IsReplica;
        SelfId = string.IsNullOrWhiteSpace(o.ReplicaId)
            ? $"{Environment.MachineName}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3))}"
            : o.ReplicaId.Trim();
        SelfAddress = o.AdvertiseAgentAddress?.Trim().TrimEnd('/') ?? string.Empty;
        _current = Build();
    }

    /// <summary>True when this gateway is one of several replicas.</summary>
    public bool Enabled { get; }

    public string SelfId { get; }

    /// <summary>This replica's agent endpoint as agents dial it directly.</summary>
    public string SelfAddress { get; }

    /// <summary>True once SIGTERM started the drain: no new tunnels, not in the set.</summary>
    public bool Draining
    {
        get
        {
            lock (_lock)
            {
                return _draining;
            }
        }
    }

    public GatewayReplicaList Current
    {
        get
        {
            lock (_lock)
            {
                return _current;
            }
        }
    }

    /// <summary>The replicas the orchestrator knows (with or without this one).</summary>
    public void Update(IEnumerable<(string Id, string AgentAddress)> replicas)
    {
        lock (_lock)
        {
            _others = [.. replicas.Where(r => r.Id != SelfId).DistinctBy(r => r.Id).Select(r => new GatewayReplicaEntry(r.Id, r.AgentAddress))];
            Publish();
        }
    }

    /// <summary>Leaves the set for good; false when already draining.</summary>
    public bool StartDraining()
    {
        lock (_lock)
        {
            if (_draining)
            {
                return false;
            }

            _draining = true;
            Publish();
            return true;
        }
    }

    /// <summary>The set once its version differs from <paramref name="version"/>, or the current one after <paramref name="maxWait"/>.</summary>
    public async Task<GatewayReplicaList> WaitForChangeAsync(string? version, TimeSpan maxWait, TimeProvider timeProvider, CancellationToken cancellationToken)
    {
        Task changed;
        lock (_lock)
        {
            if (_current.Version != version)
            {
                return _current;
            }

            changed = _changed.Task;
        }

        try
        {
            await changed.WaitAsync(maxWait, timeProvider, cancellationToken);
        }
        catch (TimeoutException)
        {
        }

        return Current;
    }

    private void Publish()
    {
        var next = Build();
        if (next.Version == _current.Version)
        {
            return;
        }

        _current = next;
        _changed.TrySetResult();
        _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private GatewayReplicaList Build()
    {
        if (!Enabled)
        {
            return new GatewayReplicaList(string.Empty, []);
        }

        IEnumerable<GatewayReplicaEntry> all = _draining ? _others : [.. _others, new GatewayReplicaEntry(SelfId, SelfAddress)];
        var sorted = all.OrderBy(r => r.Id, StringComparer.Ordinal).ToList();
        var text = string.Join('\n', sorted.Select(r => r.Id + "=" + r.AgentAddress));
        var version = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];
        return new GatewayReplicaList(version, sorted);
    }
}
