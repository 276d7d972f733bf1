using k8s.Models;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Kubernetes;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>The ready wait's decisions (<see cref="PodStartTracker"/>): ready, failed, or waiting until when.</summary>
public sealed class PodStartTrackerTests
{
    private static readonly DateTimeOffset s_start = new(2026, 12, 2, 8, 0, 0, TimeSpan.Zero);

    [Fact]
    public void APendingPodWaitsUntilTheReadyTimeoutAndAReadyOneGivesItsIp()
    {
        var (tracker, pod) = Track(o => o.PodReadyTimeout = TimeSpan.FromSeconds(90));

        var created = tracker.Observe(pod, s_start);
        Assert.Equal(PodReadinessKind.Pending, created.Readiness.Kind);
        Assert.Equal(s_start.AddSeconds(90), created.WaitUntil);

        var starting = tracker.Observe(With(pod, p => FakePodStates.RunningNotReady(p, "10.0.0.1")), s_start.AddSeconds(30));
        Assert.Equal(PodReadinessKind.Pending, starting.Readiness.Kind);
        Assert.Equal(s_start.AddSeconds(90), starting.WaitUntil); // from the start, not from the observation

        var ready = tracker.Observe(With(pod, p => FakePodStates.RunningReady(p, "10.0.0.1")), s_start.AddSeconds(40));
        Assert.Equal(new PodReadiness(PodReadinessKind.Ready, "10.0.0.1"), ready.Readiness);
    }

    [Fact]
    public void APodThatCannotStartFailsAsPodReadinessSays()
    {
        var (tracker, pod) = Track(o => o.AgentImage = "registry.example/missing:9");

        var step = tracker.Observe(With(pod, FakePodStates.ImagePullBackOff), s_start);

        Assert.Equal(PodReadinessKind.Failed, step.Readiness.Kind);
        Assert.False(step.Readiness.Transient);
        Assert.Contains("cannot pull image 'registry.example/missing:9'", step.Readiness.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void WithoutAGracePeriodTheFirstUnschedulableReportFailsTransiently()
    {
        var (tracker, pod) = Track();

        var step = tracker.Observe(With(pod, p => FakePodStates.Unschedulable(p, "0/3 nodes are available")), s_start);

        Assert.Equal(PodReadinessKind.Failed, step.Readiness.Kind);
        Assert.True(step.Readiness.Transient);
        Assert.Equal("agent pod rbs-agent-t1 cannot be scheduled: 0/3 nodes are available", step.Readiness.Detail);
    }

    [Fact]
    public void AnUnschedulablePodHasTheGracePeriodFromTheFirstReportThenFails()
    {
        var (tracker, pod) = Track(o => o.UnschedulableGracePeriod = TimeSpan.FromMinutes(2));
        var unschedulable = With(pod, p => FakePodStates.Unschedulable(p, "pod triggered scale-up"));

        var first = tracker.Observe(unschedulable, s_start.AddSeconds(10));
        Assert.Equal(PodReadinessKind.Unschedulable, first.Readiness.Kind);
        Assert.Equal(s_start.AddSeconds(130), first.GiveUpAt);
        Assert.Equal(s_start.AddSeconds(130), first.WaitUntil);

        var again = tracker.Observe(unschedulable, s_start.AddSeconds(70));
        Assert.Equal(PodReadinessKind.Unschedulable, again.Readiness.Kind);
        Assert.Equal(s_start.AddSeconds(130), again.WaitUntil); // not pushed back by a later report

        var late = tracker.Observe(unschedulable, s_start.AddSeconds(130));
        Assert.Equal(PodReadinessKind.Failed, late.Readiness.Kind);
        Assert.True(late.Readiness.Transient);
        Assert.Contains("pod triggered scale-up", late.Readiness.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void TheReadyTimeoutCapsTheGracePeriod()
    {
        var (tracker, pod) = Track(o =>
        {
            o.PodReadyTimeout = TimeSpan.FromMinutes(3);
            o.UnschedulableGracePeriod = TimeSpan.FromMinutes(10);
        });

        var step = tracker.Observe(With(pod, p => FakePodStates.Unschedulable(p, "no node fits")), s_start.AddMinutes(1));

        Assert.Equal(PodReadinessKind.Unschedulable, step.Readiness.Kind);
        Assert.Equal(s_start.AddMinutes(11), step.GiveUpAt);
        Assert.Equal(s_start.AddMinutes(3), step.WaitUntil);
    }

    [Fact]
    public void OnceScheduledAfterAllThePodIsBackOnTheReadyTimeoutAndALaterUnschedulableReportStartsAFreshGracePeriod()
    {
        var (tracker, pod) = Track(o =>
        {
            o.PodReadyTimeout = TimeSpan.FromMinutes(5);
            o.UnschedulableGracePeriod = TimeSpan.FromMinutes(2);
        });
        var unschedulable = With(pod, p => FakePodStates.Unschedulable(p, "no node fits"));
        tracker.Observe(unschedulable, s_start);

        var scheduled = tracker.Observe(With(pod, FakePodStates.Scheduled), s_start.AddMinutes(1));
        Assert.Equal(PodReadinessKind.Pending, scheduled.Readiness.Kind);
        Assert.Equal(s_start.AddMinutes(5), scheduled.WaitUntil);

        var again = tracker.Observe(unschedulable, s_start.AddMinutes(2.5));
        Assert.Equal(PodReadinessKind.Unschedulable, again.Readiness.Kind);
        Assert.Equal(s_start.AddMinutes(4.5), again.GiveUpAt);
    }

    [Fact]
    public void ATimeoutNamesWhereThePodIsStuckOrWhyItCannotBeScheduled()
    {
        var (tracker, pod) = Track(o =>
        {
            o.PodReadyTimeout = TimeSpan.FromSeconds(90);
            o.UnschedulableGracePeriod = TimeSpan.FromMinutes(10);
        });
        tracker.Observe(With(pod, p => FakePodStates.RunningNotReady(p, "10.0.0.1")), s_start);
        var notReady = tracker.TimedOut();
        Assert.True(notReady.Transient);
        Assert.Equal(
            "agent pod rbs-agent-t1 not ready after 00:01:30 (phase Running, not ready ContainersNotReady); " +
            "raise Orchestrator:Kubernetes:PodReadyTimeout if image pulls are slow",
            notReady.Message);

        tracker.Observe(With(pod, p => FakePodStates.Unschedulable(p, "0/1 nodes are available")), s_start.AddSeconds(10));
        var unschedulable = tracker.TimedOut();
        Assert.True(unschedulable.Transient);
        Assert.Equal("agent pod rbs-agent-t1 cannot be scheduled: 0/1 nodes are available", unschedulable.Message);
    }

    private static (PodStartTracker Tracker, V1Pod Pod) Track(Action<KubernetesComputeOptions>? configure = null)
    {
        var options = new KubernetesComputeOptions();
        configure?.Invoke(options);
        var pod = AgentPod.Build(new AgentSpec("t1", "u", "r", "/s"), options);
        pod.Status = new V1PodStatus { Phase = "Pending" };
        return (new PodStartTracker(pod, options, s_start), pod);
    }

    /// <summary>A copy of <paramref name="pod"/> changed as the scheduler or kubelet would.</summary>
    private static V1Pod With(V1Pod pod, Action<V1Pod> change)
    {
        var copy = k8s.KubernetesJson.Deserialize<V1Pod>(k8s.KubernetesJson.Serialize(pod));
        copy.Status ??= new V1PodStatus();
        change(copy);
        return copy;
    }
}
