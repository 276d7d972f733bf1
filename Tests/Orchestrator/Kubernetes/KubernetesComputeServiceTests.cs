using System.Net;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Kubernetes;
using Rbs.Orchestrator.State;
using Rbs.Tests.Infrastructure;
using k8s;
using k8s.Models;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>
/// KubernetesComputeService driven through the real KubernetesClient against <see cref="FakeKubernetesApiServer"/>.
/// </summary>
public sealed class KubernetesComputeServiceTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Ns = "rbs-test";
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(15);
    private readonly List<string> _logLines = [];
    private readonly List<(string Fragment, TaskCompletionSource Done)> _logWaiters = [];
    private FakeKubernetesApiServer _server = null!;

    public async Task InitializeAsync() => _server = await FakeKubernetesApiServer.StartAsync(Log);

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task StartCreatesTheAgentPodAndReturnsItsPodIpOnceRunningAndReady()
    {
        var service = NewService(o =>
        {
            o.AgentImage = "registry.example/rbs-agent:1.2.3";
            o.ServiceAccountName = "rbs-agent";
            o.CpuRequest = "500m";
            o.MemoryRequest = "1Gi";
            o.CpuLimit = "2";
            o.MemoryLimit = "4Gi";
        });
        var spec = new AgentSpec("a0123456789abcdef0123", "alice@example.com", new string('f', 64), "/home/alice/src/repo");

        var start = service.StartAsync(spec, CancellationToken.None);
        var podName = "rbs-agent-a0123456789abcdef0123";
        await _server.WaitForPodAsync(Ns, podName).WaitAsync(s_timeout);
        await _server.WaitForWatchAsync(Ns, podName).WaitAsync(s_timeout);

        var sent = Assert.Single(_server.CreatedPods);
        Assert.Equal(podName, sent.Metadata.Name);
        var labels = sent.Metadata.Labels;
        Assert.Equal("rbs-agent", labels["app.kubernetes.io/name"]);
        Assert.Equal("rbs-orchestrator", labels["app.kubernetes.io/managed-by"]);
        Assert.Equal("a0123456789abcdef0123", labels["rbs.dev/agent-id"]);
        Assert.All(labels.Values, v => Assert.True(v.Length <= 63, $"label value too long: {v}"));
        Assert.NotEqual("alice@example.com", labels["rbs.dev/user"]); // '@' is not allowed in label values
        Assert.StartsWith("alice", labels["rbs.dev/user"], StringComparison.Ordinal);
        Assert.Equal("alice@example.com", sent.Metadata.Annotations["rbs.dev/user"]);
        Assert.Equal(new string('f', 64), sent.Metadata.Annotations["rbs.dev/repo-hash"]);
        Assert.Equal("/home/alice/src/repo", sent.Metadata.Annotations["rbs.dev/source-path"]);

        var container = Assert.Single(sent.Spec.Containers);
        Assert.Equal("registry.example/rbs-agent:1.2.3", container.Image);
        Assert.Equal(["rbs-agent"], container.Command);
        Assert.Equal(["--agent-id", "a0123456789abcdef0123", "--workspace", "/workspace", "--sync-state-dir", "/home/rbs/.cache/rbs-sync", "--listen", "0.0.0.0:9011"], container.Args);
        Assert.Equal("500m", container.Resources.Requests["cpu"].ToString());
        Assert.Equal("1Gi", container.Resources.Requests["memory"].ToString());
        Assert.Equal("2", container.Resources.Limits["cpu"].ToString());
        Assert.Equal("4Gi", container.Resources.Limits["memory"].ToString());
        Assert.Equal(9011, container.ReadinessProbe.Grpc.Port);
        Assert.Equal(9011, container.LivenessProbe.Grpc.Port);
        Assert.Equal("liveness", container.LivenessProbe.Grpc.Service);
        Assert.Null(container.ReadinessProbe.Grpc.Service);
        Assert.True(container.SecurityContext.RunAsNonRoot);
        Assert.False(container.SecurityContext.AllowPrivilegeEscalation);
        Assert.Equal("rbs-agent", sent.Spec.ServiceAccountName);
        Assert.False(sent.Spec.AutomountServiceAccountToken);
        Assert.True(sent.Spec.SecurityContext.RunAsNonRoot);
        Assert.Contains(container.VolumeMounts, m => m.MountPath == "/workspace");

        // Scheduled, then running but not yet answering health checks: still waiting.
        _server.UpdatePod(Ns, podName, FakePodStates.Scheduled);
        _server.UpdatePod(Ns, podName, p => FakePodStates.RunningNotReady(p, "10.1.2.3"));
        await LogLineAsync(podName + " starting: phase Running").WaitAsync(s_timeout);
        Assert.False(start.IsCompleted, "StartAsync returned before the pod was Ready");

        _server.UpdatePod(Ns, podName, p => FakePodStates.RunningReady(p, "10.1.2.3"));
        var started = await start.WaitAsync(s_timeout);

        Assert.Equal(podName, started.BackendRef);
        Assert.Equal("http://10.1.2.3:9011", started.Address);
        // Waited with a watch from the created version, not by polling the pod.
        var requests = _server.Requests;
        Assert.Contains(requests, r => r.Contains("watch=true", StringComparison.Ordinal) && r.Contains("fieldSelector=metadata.name%3D" + podName, StringComparison.Ordinal));
        Assert.DoesNotContain(requests, r => r.StartsWith($"GET /api/v1/namespaces/{Ns}/pods/{podName}", StringComparison.Ordinal));
        Assert.Empty(_server.Deletions);
    }

    [Fact]
    public async Task TunnelModeAgentGetsTheGatewayAsAnArgumentAndTheJoinTokenOnlyInItsEnvironment()
    {
        var service = NewService();
        var spec = new AgentSpec("a1", "bob", "repo1", "/src", new TunnelSpec("http://rbs-gateway:8081", "secret-join-token"));

        var start = service.StartAsync(spec, CancellationToken.None);
        await _server.WaitForWatchAsync(Ns, "rbs-agent-a1").WaitAsync(s_timeout);
        _server.UpdatePod(Ns, "rbs-agent-a1", p => FakePodStates.RunningReady(p, "10.0.0.9"));
        await start.WaitAsync(s_timeout);

        var container = Assert.Single(_server.CreatedPods).Spec.Containers[0];
        Assert.Equal(["--agent-id", "a1", "--workspace", "/workspace", "--sync-state-dir", "/home/rbs/.cache/rbs-sync", "--listen", "0.0.0.0:9011", "--gateway", "http://rbs-gateway:8081"], container.Args);
        Assert.DoesNotContain(container.Args, a => a.Contains("secret-join-token", StringComparison.Ordinal));
        Assert.Contains(container.Env, e => e.Name == "Agent__Tunnel__JoinToken" && e.Value == "secret-join-token");
    }

    [Fact]
    public async Task UnschedulablePodFailsTheStartWithTheSchedulersMessageAndIsDeleted()
    {
        var failure = await StartAndFailAsync("a2", p => FakePodStates.Unschedulable(p, "0/3 nodes are available: 3 Insufficient memory."));

        Assert.True(failure.Transient);
        Assert.Contains("cannot be scheduled", failure.Message, StringComparison.Ordinal);
        Assert.Contains("0/3 nodes are available: 3 Insufficient memory.", failure.Message, StringComparison.Ordinal);
        AssertDeleted("rbs-agent-a2");
    }

    [Fact]
    public async Task UnschedulableWithinTheGracePeriodKeepsWaitingAndSucceedsWhenANodeArrives()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var service = NewService(o => o.UnschedulableGracePeriod = TimeSpan.FromMinutes(2), time);
        var start = service.StartAsync(new AgentSpec("a2b", "u", "r", "/s"), CancellationToken.None);
        await _server.WaitForWatchAsync(Ns, "rbs-agent-a2b").WaitAsync(s_timeout);

        _server.UpdatePod(Ns, "rbs-agent-a2b", p => FakePodStates.Unschedulable(p, "0/1 nodes are available; pod triggered scale-up"));
        await LogLineAsync("rbs-agent-a2b unschedulable").WaitAsync(s_timeout);
        time.Advance(TimeSpan.FromMinutes(1));
        Assert.False(start.IsCompleted);

        _server.UpdatePod(Ns, "rbs-agent-a2b", p => FakePodStates.RunningReady(p, "10.0.0.2"));
        Assert.Equal("http://10.0.0.2:9011", (await start.WaitAsync(s_timeout)).Address);
        Assert.Empty(_server.Deletions);
    }

    [Fact]
    public async Task ImagePullBackOffFailsPermanentlyNamingTheImageAndIsDeleted()
    {
        var failure = await StartAndFailAsync("a3", FakePodStates.ImagePullBackOff, o => o.AgentImage = "registry.example/missing:9");

        Assert.False(failure.Transient);
        Assert.Contains("cannot pull image 'registry.example/missing:9'", failure.Message, StringComparison.Ordinal);
        Assert.Contains("ImagePullBackOff", failure.Message, StringComparison.Ordinal);
        AssertDeleted("rbs-agent-a3");
    }

    [Fact]
    public async Task CrashLoopBackOffFailsPermanentlyWithTheExitCodeAndIsDeleted()
    {
        var failure = await StartAndFailAsync("a4", p => FakePodStates.CrashLoopBackOff(p, exitCode: 3));

        Assert.False(failure.Transient);
        Assert.Contains("CrashLoopBackOff", failure.Message, StringComparison.Ordinal);
        Assert.Contains("exit code 3", failure.Message, StringComparison.Ordinal);
        AssertDeleted("rbs-agent-a4");
    }

    [Fact]
    public async Task FailedPhaseFailsTheStartAndIsDeleted()
    {
        var failure = await StartAndFailAsync("a4b", p => FakePodStates.Failed(p, "UnexpectedAdmissionError", "Allocate failed"));

        Assert.False(failure.Transient);
        Assert.Contains("phase Failed UnexpectedAdmissionError: Allocate failed", failure.Message, StringComparison.Ordinal);
        AssertDeleted("rbs-agent-a4b");
    }

    [Fact]
    public async Task PodThatNeverBecomesReadyTimesOutTransientlyAndIsDeleted()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var service = NewService(o => o.PodReadyTimeout = TimeSpan.FromSeconds(90), time);
        var start = service.StartAsync(new AgentSpec("a5", "u", "r", "/s"), CancellationToken.None);
        await _server.WaitForWatchAsync(Ns, "rbs-agent-a5").WaitAsync(s_timeout);
        _server.UpdatePod(Ns, "rbs-agent-a5", p => FakePodStates.RunningNotReady(p, "10.0.0.5"));
        await LogLineAsync("rbs-agent-a5 starting: phase Running").WaitAsync(s_timeout);

        time.Advance(TimeSpan.FromSeconds(89));
        // Still waiting at 89 s: it observes the pod's next change, which a wait that had given up would not.
        _server.UpdatePod(Ns, "rbs-agent-a5", p => p.Status.Conditions.Single(c => c.Type == "Ready").Message = "readiness probe failed");
        var observed = LogLineAsync("rbs-agent-a5 starting: phase Running, not ready ContainersNotReady: readiness probe failed");
        await Task.WhenAny(observed, start).WaitAsync(s_timeout);
        Assert.False(start.IsCompleted, "gave up before PodReadyTimeout");
        time.Advance(TimeSpan.FromSeconds(2));

        var failure = await Assert.ThrowsAsync<ComputeException>(() => start.WaitAsync(s_timeout));
        Log("error: " + failure.Message);
        Assert.True(failure.Transient);
        Assert.Contains("not ready after 00:01:30", failure.Message, StringComparison.Ordinal);
        Assert.Contains("phase Running", failure.Message, StringComparison.Ordinal);
        AssertDeleted("rbs-agent-a5");
    }

    [Fact]
    public async Task PodDeletedWhileStartingFailsTheStart()
    {
        var service = NewService();
        var start = service.StartAsync(new AgentSpec("a6", "u", "r", "/s"), CancellationToken.None);
        await _server.WaitForWatchAsync(Ns, "rbs-agent-a6").WaitAsync(s_timeout);

        _server.RemovePod(Ns, "rbs-agent-a6");

        var failure = await Assert.ThrowsAsync<ComputeException>(() => start.WaitAsync(s_timeout));
        Assert.Contains("was deleted while starting", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task WatchThatTheServerEndsIsResumedWithoutMissingTheReadyTransition()
    {
        var service = NewService();
        var start = service.StartAsync(new AgentSpec("a7", "u", "r", "/s"), CancellationToken.None);
        await _server.WaitForWatchAsync(Ns, "rbs-agent-a7").WaitAsync(s_timeout);

        // The API server ends the watch (its timeout); the pod moves on while nobody watches.
        _server.CloseWatches();
        await _server.WaitUntilNoWatchesAsync().WaitAsync(s_timeout);
        _server.UpdatePod(Ns, "rbs-agent-a7", FakePodStates.Scheduled);
        await _server.WaitForWatchAsync(Ns, "rbs-agent-a7").WaitAsync(s_timeout);
        Assert.False(start.IsCompleted);
        _server.UpdatePod(Ns, "rbs-agent-a7", p => FakePodStates.RunningReady(p, "10.0.0.7"));

        Assert.Equal("http://10.0.0.7:9011", (await start.WaitAsync(s_timeout)).Address);
        Assert.Equal(2, _server.Requests.Count(r => r.Contains("watch=true", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task ExpiredResourceVersionGoneIsRecoveredByRelistingAndWatchingAgain()
    {
        // etcd compacted right after the create: watching from the create's version answers ERROR 410 Gone.
        _server.CompactAfterEachCreate = true;
        var service = NewService();
        var start = service.StartAsync(new AgentSpec("a7b", "u", "r", "/s"), CancellationToken.None);

        await _server.WaitForWatchAsync(Ns, "rbs-agent-a7b").WaitAsync(s_timeout);
        _server.UpdatePod(Ns, "rbs-agent-a7b", p => FakePodStates.RunningReady(p, "10.0.0.8"));

        Assert.Equal("http://10.0.0.8:9011", (await start.WaitAsync(s_timeout)).Address);
        Assert.Contains(_server.Requests, r => r.StartsWith($"GET /api/v1/namespaces/{Ns}/pods?fieldSelector=metadata.name%3Drbs-agent-a7b", StringComparison.Ordinal)
            && !r.Contains("watch=true", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ForbiddenCreateFailsPermanentlyPointingAtRbac()
    {
        _server.FailCreatesWith = HttpStatusCode.Forbidden;
        var service = NewService();

        var failure = await Assert.ThrowsAsync<ComputeException>(
            () => service.StartAsync(new AgentSpec("a8", "u", "r", "/s"), CancellationToken.None).WaitAsync(s_timeout));

        Log("error: " + failure.Message);
        Assert.False(failure.Transient);
        Assert.Contains("cannot create resource \"pods\"", failure.Message, StringComparison.Ordinal);
        Assert.Contains("create/get/list/watch/delete on pods in namespace rbs-test", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CallerCancellingTheStartDeletesThePod()
    {
        var service = NewService();
        using var cts = new CancellationTokenSource();
        var start = service.StartAsync(new AgentSpec("a9", "u", "r", "/s"), cts.Token);
        await _server.WaitForWatchAsync(Ns, "rbs-agent-a9").WaitAsync(s_timeout);

        await cts.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => start.WaitAsync(s_timeout));
        AssertDeleted("rbs-agent-a9");
    }

    [Fact]
    public async Task StopDeletesThePodWithTheGracePeriodAndAnAlreadyGonePodIsSuccess()
    {
        var service = NewService(o => o.DeleteGracePeriod = TimeSpan.FromSeconds(7));
        var record = await StartReadyAsync(service, "b1", "10.0.1.1");

        await service.StopAsync(record, CancellationToken.None).WaitAsync(s_timeout);
        Assert.Null(_server.GetPod(Ns, "rbs-agent-b1"));
        Assert.Equal(("rbs-agent-b1", (int?)7), Assert.Single(_server.Deletions));

        await service.StopAsync(record, CancellationToken.None).WaitAsync(s_timeout); // 404: fine
        Assert.Equal(2, _server.Deletions.Count);
    }

    [Fact]
    public async Task ProbeSeesAliveDeadAndUnknown()
    {
        var service = NewService();
        var record = await StartReadyAsync(service, "b2", "10.0.2.2");
        Assert.Equal(AgentHealth.Alive, await service.ProbeAsync(record, CancellationToken.None).WaitAsync(s_timeout));

        // Restarting container (liveness failed): not ready right now, but not gone either.
        _server.UpdatePod(Ns, "rbs-agent-b2", p => FakePodStates.RunningNotReady(p, "10.0.2.2"));
        Assert.Equal(AgentHealth.Unknown, await service.ProbeAsync(record, CancellationToken.None).WaitAsync(s_timeout));

        _server.UpdatePod(Ns, "rbs-agent-b2", p => FakePodStates.Failed(p, "Evicted", "The node was low on resource: memory."));
        Assert.Equal(AgentHealth.Dead, await service.ProbeAsync(record, CancellationToken.None).WaitAsync(s_timeout));

        _server.RemovePod(Ns, "rbs-agent-b2");
        Assert.Equal(AgentHealth.Dead, await service.ProbeAsync(record, CancellationToken.None).WaitAsync(s_timeout));

        await _server.DisposeAsync(); // API server gone: cannot tell, must not declare the agent dead
        Assert.Equal(AgentHealth.Unknown, await service.ProbeAsync(record, CancellationToken.None).WaitAsync(s_timeout));
    }

    [Fact]
    public async Task NewServiceInstanceRediscoversReadyAgentPodsByLabel()
    {
        var first = NewService();
        var alice = await StartReadyAsync(first, "c1", "10.0.3.1", user: "alice@example.com", repo: new string('a', 64), source: "/src/alice");
        var bob = await StartReadyAsync(first, "c2", "10.0.3.2", user: "bob", repo: "r2", source: "/src/bob");
        // Not adoptable: still starting, another installation's agent, and something else entirely.
        _server.AddPod(Ns, AgentPod.Build(new AgentSpec("c3", "carol", "r3", "/src/carol"), new KubernetesComputeOptions()));
        var otherInstall = AgentPod.Build(new AgentSpec("c4", "dave", "r4", "/src/dave"), new KubernetesComputeOptions { Instance = "other" });
        _server.AddPod(Ns, otherInstall);
        _server.UpdatePod(Ns, "rbs-agent-c4", p => FakePodStates.RunningReady(p, "10.0.3.4"));
        var terminating = await StartReadyAsync(first, "c5", "10.0.3.6", user: "erin", repo: "r5", source: "/src/erin");
        _server.UpdatePod(Ns, "rbs-agent-c5", p => p.Metadata.DeletionTimestamp = DateTime.UtcNow); // graceful deletion under way
        _server.AddPod(Ns, new V1Pod { Metadata = new V1ObjectMeta { Name = "unrelated", Labels = new Dictionary<string, string> { ["app"] = "x" } }, Spec = new V1PodSpec { Containers = [new V1Container { Name = "x", Image = "x" }] } });
        _server.UpdatePod(Ns, "unrelated", p => FakePodStates.RunningReady(p, "10.0.3.5"));

        // "Restart": a fresh service with a fresh client.
        var restarted = NewService();
        var found = await restarted.DiscoverAsync(CancellationToken.None).WaitAsync(s_timeout);

        Assert.Equal(2, found.Count);
        var a = Assert.Single(found, d => d.AgentId == "c1");
        Assert.Equal(new DiscoveredAgent("c1", "alice@example.com", new string('a', 64), "/src/alice", "rbs-agent-c1", "http://10.0.3.1:9011"), a);
        var b = Assert.Single(found, d => d.AgentId == "c2");
        Assert.Equal(new DiscoveredAgent("c2", "bob", "r2", "/src/bob", "rbs-agent-c2", "http://10.0.3.2:9011"), b);
        Assert.Equal(AgentHealth.Alive, await restarted.ProbeAsync(alice, CancellationToken.None));
        Assert.Equal(AgentHealth.Dead, await restarted.ProbeAsync(terminating, CancellationToken.None));

        // A vanished pod is forgotten: no longer discovered, and probed Dead.
        _server.RemovePod(Ns, "rbs-agent-c2");
        found = await restarted.DiscoverAsync(CancellationToken.None).WaitAsync(s_timeout);
        Assert.Equal(["c1"], found.Select(d => d.AgentId));
        Assert.Equal(AgentHealth.Dead, await restarted.ProbeAsync(bob, CancellationToken.None));
        Assert.Contains(_server.Requests, r => r.Contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Drbs-orchestrator", StringComparison.Ordinal));
    }

    private async Task<ComputeException> StartAndFailAsync(string agentId, Action<V1Pod> toState, Action<KubernetesComputeOptions>? configure = null)
    {
        var service = NewService(configure);
        var start = service.StartAsync(new AgentSpec(agentId, "u", "r", "/s"), CancellationToken.None);
        var podName = "rbs-agent-" + agentId;
        await _server.WaitForWatchAsync(Ns, podName).WaitAsync(s_timeout);
        _server.UpdatePod(Ns, podName, toState);
        var failure = await Assert.ThrowsAsync<ComputeException>(() => start.WaitAsync(s_timeout));
        Log("error: " + failure.Message);
        return failure;
    }

    private async Task<AgentRecord> StartReadyAsync(
        KubernetesComputeService service, string agentId, string podIp, string user = "u", string repo = "r", string source = "/s")
    {
        var start = service.StartAsync(new AgentSpec(agentId, user, repo, source), CancellationToken.None);
        var podName = "rbs-agent-" + agentId;
        await _server.WaitForWatchAsync(Ns, podName).WaitAsync(s_timeout);
        _server.UpdatePod(Ns, podName, p => FakePodStates.RunningReady(p, podIp));
        var started = await start.WaitAsync(s_timeout);
        var now = DateTimeOffset.UtcNow;
        return new AgentRecord(agentId, user, repo, source, "kubernetes", started.BackendRef, started.Address, AgentState.Ready, now, now, null, null);
    }

    private void AssertDeleted(string podName)
    {
        Assert.Contains(_server.Deletions, d => d.Name == podName);
        Assert.Null(_server.GetPod(Ns, podName));
    }

    private KubernetesComputeService NewService(Action<KubernetesComputeOptions>? configure = null, TimeProvider? time = null)
    {
        var options = new KubernetesComputeOptions { Namespace = Ns };
        configure?.Invoke(options);
        var client = new k8s.Kubernetes(new KubernetesClientConfiguration { Host = _server.Address });
        return new KubernetesComputeService(
            new KubernetesConnection(client, Ns), Options.Create(options), time ?? TimeProvider.System,
            new TestOutputLogger<KubernetesComputeService>(output, OnServiceLog));
    }

    /// <summary>Completes when the service logs a line containing <paramref name="fragment"/> (from now on).</summary>
    private Task LogLineAsync(string fragment)
    {
        lock (_logLines)
        {
            if (_logLines.Any(l => l.Contains(fragment, StringComparison.Ordinal)))
            {
                return Task.CompletedTask;
            }

            var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _logWaiters.Add((fragment, waiter));
            return waiter.Task;
        }
    }

    private void OnServiceLog(string line)
    {
        lock (_logLines)
        {
            _logLines.Add(line);
            foreach (var waiter in _logWaiters.Where(w => line.Contains(w.Fragment, StringComparison.Ordinal)).ToList())
            {
                waiter.Done.TrySetResult();
                _logWaiters.Remove(waiter);
            }
        }
    }

    private void Log(string line) => TestLog.Write(output, line);
}
