using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Shared.Protocol;
using Rbs.V1;
using Rbs.Tests.Agent;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;

namespace Rbs.Tests.Stacks.Replicas;

/// <summary>
/// Several gateway replicas with real processes (<see cref="ReplicaStack"/>): an agent that knows one replica's address
/// keeps tunnels to every live replica, so any replica serves its streams; replicas that join, crash, come back or
/// drain (SIGTERM) change its tunnels within seconds. In the gateway's one-at-a-time collection: they are CPU-heavy.
/// </summary>
[Collection(Gateway.TunnelCollection.Name)]
public sealed class GatewayReplicaTests(ITestOutputHelper output) : IDisposable
{
    /// <summary>"Within seconds": what a replica joining or leaving may take to show in an agent's tunnels.</summary>
    private static readonly TimeSpan s_repair = TimeSpan.FromSeconds(20);

    private readonly TempWorkspace _workspace = new();

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public async Task AgentKeepsTunnelsToEveryLiveReplica()
    {
        await using var stack = await ReplicaStack.StartAsync(Log, "r-a", "r-b");
        var server = await stack.GetServerAsync(_workspace.Root);

        // Either replica's public endpoint serves the agent's streams: the agent dialled both, knowing only r-a.
        await TestWait.EventuallyAsync(() => stack.IsRegisteredAtAsync("r-b", server.AgentId), "the agent's tunnels at r-b", s_repair);
        Assert.True(await stack.IsRegisteredAtAsync("r-a", server.AgentId));
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-a", server)).AgentId);
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-b", server)).AgentId);

        // A replica started later gets the agent's tunnels within seconds.
        await stack.StartReplicaAsync("r-c");
        await TestWait.EventuallyAsync(() => stack.IsRegisteredAtAsync("r-c", server.AgentId), "the agent's tunnels at the new replica r-c", s_repair);
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-c", server)).AgentId);

        // A crashed replica leaves the agent's set (its lease lapses); the others serve on.
        await stack.KillReplicaAsync("r-b");
        await TestWait.EventuallyAsync(() => stack.AgentLog(server.AgentId).Contains("Gateway replica 'r-b'", StringComparison.Ordinal),
            "the agent dropping the killed replica r-b", s_repair);
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-a", server)).AgentId);
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-c", server)).AgentId);

        // Back on its old addresses, it is dialled again.
        await stack.StartReplicaAsync("r-b");
        await TestWait.EventuallyAsync(() => stack.IsRegisteredAtAsync("r-b", server.AgentId), "the agent's tunnels at the restarted r-b", s_repair);
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-b", server)).AgentId);
    }

    [Fact]
    public async Task SigtermDrainsAReplicaWhileItsStreamFinishes()
    {
        await using var stack = await ReplicaStack.StartAsync(Log, "r-a", "r-b");
        var server = await stack.GetServerAsync(_workspace.Root);
        await TestWait.EventuallyAsync(() => stack.IsRegisteredAtAsync("r-b", server.AgentId), "the agent's tunnels at r-b", s_repair);

        // A command streaming through r-a (the address GetServer hands out): fake bazel's cat echoes stdin until it closes.
        await using var jbazel = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, new Dictionary<string, string?>(),
        [
            $"--rbs_orchestrator={stack.First.PublicAddress}", "--rbs_connect=tunnel", "--rbs_timeout=60s", $"--rbs_api_key={ReplicaStack.AliceKey}", "cat",
        ]);
        await jbazel.StandardInput.WriteAsync("before\n"u8.ToArray()).AsTask().WaitAsync(ReplicaStack.Timeout);
        await jbazel.StandardInput.FlushAsync();
        await jbazel.WaitForStdoutAsync("before", ReplicaStack.Timeout);

        var clock = Stopwatch.StartNew();
        stack.TerminateReplica("r-a");
        // The agent leaves the draining replica; new streams go through the other one.
        await TestWait.EventuallyAsync(() => stack.AgentLog(server.AgentId).Contains("Gateway replica 'r-a'", StringComparison.Ordinal),
            "the agent dropping the draining replica r-a", s_repair);
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-b", server)).AgentId);
        Assert.False(stack["r-a"].Process!.HasExited, "r-a exited while a stream was still in flight");

        // The stream in flight finishes through the draining replica.
        await jbazel.StandardInput.WriteAsync("after\n"u8.ToArray()).AsTask().WaitAsync(ReplicaStack.Timeout);
        jbazel.StandardInput.Close();
        Assert.Equal(0, await jbazel.WaitForExitAsync(ReplicaStack.Timeout));
        Assert.Equal("before\nafter\n", jbazel.StdoutText);

        // Then the replica exits, within its drain bound (15 s).
        await stack["r-a"].Process!.WaitForExitAsync().WaitAsync(ReplicaStack.Timeout);
        output.WriteLine($"r-a exited {clock.Elapsed.TotalSeconds:0.0} s after SIGTERM, code {stack["r-a"].Process!.ExitCode}");
        Assert.Equal(0, stack["r-a"].Process!.ExitCode);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"r-a took {clock.Elapsed.TotalSeconds:0.0} s to drain");
        Assert.Equal(server.AgentId, (await stack.GetStatusThroughAsync("r-b", server)).AgentId);
    }

    [Fact]
    public async Task RollingRestartOfEveryReplicaWhile20BuildsRunFailsNone()
    {
        string[] ids = ["r-a", "r-b", "r-c"];
        await using var stack = await ReplicaStack.StartAsync(Log, withServices: true, ids);
        var server = await stack.GetServerAsync(_workspace.Root);
        foreach (var id in ids)
        {
            await TestWait.EventuallyAsync(() => stack.IsRegisteredAtAsync(id, server.AgentId), $"the agent's tunnels at {id}", s_repair);
        }

        // 20 clients build back to back through the public Service, each on its own connection (so on every replica).
        using var stop = new CancellationTokenSource();
        var counts = new BuildCounts();
        var clients = Enumerable.Range(0, 20).Select(i => Task.Run(() => BuildContinuouslyAsync(stack, server, i, counts, stop.Token))).ToArray();
        await TestWait.EventuallyAsync(() => counts.Succeeded >= 40, "builds running through every replica", ReplicaStack.Timeout);

        foreach (var id in ids)
        {
            var before = counts.Succeeded;
            stack.TerminateReplica(id);
            await stack[id].Process!.WaitForExitAsync().WaitAsync(ReplicaStack.Timeout);
            Assert.Equal(0, stack[id].Process!.ExitCode);
            await stack.StartReplicaAsync(id);
            await TestWait.EventuallyAsync(() => stack.IsRegisteredAtAsync(id, server.AgentId), $"the agent's tunnels at the restarted {id}", s_repair);
            // Builds went on meanwhile.
            await TestWait.EventuallyAsync(() => counts.Succeeded >= before + 20, $"builds after restarting {id}", ReplicaStack.Timeout);
        }

        await stop.CancelAsync();
        await Task.WhenAll(clients).WaitAsync(ReplicaStack.Timeout);
        output.WriteLine($"{counts.Succeeded} builds succeeded, {counts.Failures.Count} failed during a rolling restart of {ids.Length} replicas");
        Assert.True(counts.Failures.IsEmpty, string.Join("\n", counts.Failures.Take(20)));
    }

    private static async Task BuildContinuouslyAsync(ReplicaStack stack, GetServerResponse server, int client, BuildCounts counts, CancellationToken stop)
    {
        // jbazel's own channel (its plain path: the public Service carries HTTP/2 here, no relay): a stream sent just as
        // a replica's GOAWAY is on the wire is one the replica did not process, and jbazel's channel sends it again
        // whole (a bare grpc-dotnet channel sends it again empty: Shared/Http/RefusedStreamReplay.cs).
        using var pool = new Rbs.JBazel.Remote.ChannelPool(relay: false);
        var channel = pool.Get(new Uri(stack.PublicAddress));
        var agent = new V1.Agent.AgentClient(channel);
        var headers = new Metadata { { RbsHeaders.AgentRoute, server.Route }, { "authorization", "Bearer " + server.SessionToken } };
        var input = $"build {client}\n";
        while (!stop.IsCancellationRequested)
        {
            try
            {
                using var timeout = new CancellationTokenSource(ReplicaStack.Timeout);
                using var call = agent.ExecuteCommand(headers, cancellationToken: timeout.Token);
                await call.RequestStream.WriteAsync(new ClientFrame { Start = new StartCommand { Args = { "cat" } } }, timeout.Token);
                await call.RequestStream.WriteAsync(new ClientFrame { Stdin = Google.Protobuf.ByteString.CopyFromUtf8(input) }, timeout.Token);
                await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }, timeout.Token);
                await call.RequestStream.CompleteAsync();
                var result = await CommandResult.ReadToEndAsync(call, timeout.Token);
                if (result.Exit?.Code == 0 && result.StdoutText == input)
                {
                    counts.Success();
                }
                else
                {
                    counts.Failure($"client {client}: exit {result.Exit?.Code}, stdout '{result.StdoutText}', stderr '{result.StderrText}'");
                }
            }
            catch (Exception e) when (!stop.IsCancellationRequested)
            {
                counts.Failure($"client {client}: {e.GetBaseException().Message}");
            }
            catch (Exception)
            {
                // Stopped while building: the test is over, not a failure.
            }
        }
    }

    /// <summary>The builds' outcomes, shared by the clients.</summary>
    private sealed class BuildCounts
    {
        private int _succeeded;

        public int Succeeded => Volatile.Read(ref _succeeded);

        public System.Collections.Concurrent.ConcurrentQueue<string> Failures { get; } = new();

        public void Success() => Interlocked.Increment(ref _succeeded);

        public void Failure(string what) => Failures.Enqueue(what);
    }

    private void Log(string line) => TestLog.Write(output, line);
}
