using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Replicas;

namespace Rbs.Tests.Gateway;

/// <summary>
/// <see cref="GatewayReplicaSet"/>: what a replica tells agents about the live replicas (the body of
/// GET /tunnel/v1/replicas), on a fake clock.
/// </summary>
public sealed class GatewayReplicaSetTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);
    private readonly FakeTimeProvider _time = new();

    [Fact]
    public void ASingleGatewayHasNoReplicaSet()
    {
        var set = new GatewayReplicaSet(Options.Create(new GatewayOptions()));
        Assert.False(set.Enabled);
        Assert.Empty(set.Current.Replicas);
    }

    [Fact]
    public async Task TheSetHoldsItselfAndThePeersAndALongPollAnswersWhenItChanges()
    {
        var set = Replica("r-b", "http://10.0.0.2:8081/");
        Assert.Equal([("r-b", "http://10.0.0.2:8081")], set.Current.Replicas.Select(r => (r.Id, r.AgentAddress)));

        // Without a change the long-poll waits, and answers the same set when its wait ends.
        var unchanged = set.WaitForChangeAsync(set.Current.Version, TimeSpan.FromSeconds(20), _time, CancellationToken.None);
        Assert.False(unchanged.IsCompleted);
        _time.Advance(TimeSpan.FromSeconds(20));
        Assert.Equal(set.Current.Version, (await unchanged.WaitAsync(s_timeout)).Version);

        // A peer joining answers the pending poll at once, ordered by id; a repeated answer is no change.
        var before = set.Current.Version;
        var poll = set.WaitForChangeAsync(before, TimeSpan.FromSeconds(20), _time, CancellationToken.None);
        set.Update([("r-b", "http://10.0.0.2:8081"), ("r-a", "http://10.0.0.1:8081")]);
        var joined = await poll.WaitAsync(s_timeout);
        Assert.NotEqual(before, joined.Version);
        Assert.Equal(["r-a", "r-b"], joined.Replicas.Select(r => r.Id));
        set.Update([("r-a", "http://10.0.0.1:8081")]);
        Assert.Equal(joined.Version, set.Current.Version);

        // A stale version (the agent's last one) is answered at once.
        Assert.Equal(joined.Version, (await set.WaitForChangeAsync(before, TimeSpan.FromSeconds(20), _time, CancellationToken.None).WaitAsync(s_timeout)).Version);
    }

    [Fact]
    public async Task DrainingLeavesTheSetAndAnswersPendingPolls()
    {
        var set = Replica("r-b", "http://10.0.0.2:8081");
        set.Update([("r-a", "http://10.0.0.1:8081")]);
        var poll = set.WaitForChangeAsync(set.Current.Version, TimeSpan.FromSeconds(20), _time, CancellationToken.None);

        Assert.True(set.StartDraining());
        Assert.False(set.StartDraining());
        Assert.True(set.Draining);
        Assert.Equal(["r-a"], (await poll.WaitAsync(s_timeout)).Replicas.Select(r => r.Id));

        // Later heartbeat answers that still name it do not bring it back.
        set.Update([("r-a", "http://10.0.0.1:8081"), ("r-b", "http://10.0.0.2:8081")]);
        Assert.Equal(["r-a"], set.Current.Replicas.Select(r => r.Id));
    }

    private static GatewayReplicaSet Replica(string id, string address) =>
        new(Options.Create(new GatewayOptions { ReplicaId = id, AdvertiseAgentAddress = address }));
}
