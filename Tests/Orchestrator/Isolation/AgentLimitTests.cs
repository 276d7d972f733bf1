using Grpc.Core;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Orchestrator.Infrastructure;

namespace Rbs.Tests.Orchestrator.Isolation;

/// <summary>
/// Issue 10, defect 9: the process backend starts at most <c>--max-agents-per-user</c> agents per user and
/// <c>--max-agents</c> in total; beyond, GetServer is ResourceExhausted and jbazel exits 50 with a line that names the
/// limit, the count and the next step.
/// </summary>
public sealed class AgentLimitTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [SkippableFact]
    public async Task JBazelExits50WithTheLimitAndTheCountWhenAUserOrEveryoneReachesTheirLimit()
    {
        Skip.IfNot(UnixProcesses.EffectiveUid() == 0, "the stack runs several users, whose agents get uids of their own (root)");
        await using var stack = await IsolationStack.StartAsync(
            output, withGateway: false, buildTool: ReachableBinaries.FakeBazel, unprivileged: false, "--max-agents-per-user", "1", "--max-agents", "2");
        var first = Workspace(stack, "one");
        var second = Workspace(stack, "two");

        var alice = await stack.JBazelAsync(first, IsolationStack.AliceKey, "direct", "exit", "0");
        Assert.True(alice.ExitCode == 0, alice.Stderr);

        // alice's second repository would be her second agent.
        var aliceAgain = await stack.JBazelAsync(second, IsolationStack.AliceKey, "direct", "exit", "0");
        Assert.Equal(50, aliceAgain.ExitCode);
        Assert.Contains("user 'alice' already has 1 agents, the most this orchestrator runs per user (--max-agents-per-user 1", aliceAgain.Stderr, StringComparison.Ordinal);
        Assert.Contains("wait for the idle reaper", aliceAgain.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("rbs: agent ", aliceAgain.Stderr, StringComparison.Ordinal);

        // Her existing agent is still hers to use: the limit holds back only new agents.
        var warm = await stack.JBazelAsync(first, IsolationStack.AliceKey, "direct", "exit", "0");
        Assert.True(warm.ExitCode == 0, warm.Stderr);
        Assert.Contains(" warm in ", warm.Stderr, StringComparison.Ordinal);

        var bob = await stack.JBazelAsync(first, IsolationStack.BobKey, "direct", "exit", "0");
        Assert.True(bob.ExitCode == 0, bob.Stderr);

        // Two agents run: the total limit stops carol although she has none.
        var carol = await stack.JBazelAsync(first, IsolationStack.CarolKey, "direct", "exit", "0");
        Assert.Equal(50, carol.ExitCode);
        Assert.Contains("this orchestrator already runs 2 agents, its limit for all users together (--max-agents 2", carol.Stderr, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task TheIdleReaperFreesAnIsolatedUsersSlot()
    {
        Skip.IfNot(UnixProcesses.EffectiveUid() == 0, "the stack runs several users, whose agents get uids of their own (root)");
        // The agent's own idle exit comes at twice the TTL; the reaper acts after one TTL, and only once the agent's
        // GetStatus (behind its access key) says it is idle: "Reaping agent" is logged on that path alone.
        await using var stack = await IsolationStack.StartAsync(
            output, withGateway: false, buildTool: ReachableBinaries.FakeBazel, unprivileged: false,
            "--max-agents-per-user", "1", "--idle-ttl", "00:00:10", "--reap-interval", "00:00:01");
        var first = Workspace(stack, "one");
        var second = Workspace(stack, "two");

        var alice = await stack.JBazelAsync(first, IsolationStack.AliceKey, "direct", "exit", "0");
        Assert.True(alice.ExitCode == 0, alice.Stderr);
        var agent = IsolationStack.AgentIdOf(alice.Stderr);

        await stack.WaitForOrchestratorLogAsync(TimeSpan.FromSeconds(60), "Reaping agent " + agent);
        var afterReaping = await stack.JBazelAsync(second, IsolationStack.AliceKey, "direct", "exit", "0");
        Assert.True(afterReaping.ExitCode == 0, afterReaping.Stderr);
        Assert.NotEqual(agent, IsolationStack.AgentIdOf(afterReaping.Stderr));
    }

    [Fact]
    public async Task ConcurrentColdAllocationsNeverExceedTheTotalLimit()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake, null, "--max-agents", "3", "--max-agents-per-user", "0");
        var calls = Enumerable.Range(0, 8)
            .Select(i => orchestrator.GetServerAsync($"repo-{i}", _context.CreateWorkspace($"w{i}")))
            .Select(async call =>
            {
                try
                {
                    await call;
                    return StatusCode.OK;
                }
                catch (RpcException e)
                {
                    output.WriteLine($"refused: {e.Status}");
                    return e.StatusCode;
                }
            })
            .ToList();
        var results = await Task.WhenAll(calls).WaitAsync(TimeSpan.FromSeconds(60));

        // Racing allocations all count each other's rows after inserting, so the limit holds (some may back out together).
        var started = results.Count(r => r == StatusCode.OK);
        Assert.InRange(started, 1, 3);
        Assert.Equal(8 - started, results.Count(r => r == StatusCode.ResourceExhausted));
        Assert.Equal(started, (await orchestrator.Store.ListAsync(CancellationToken.None)).Count);

        // One at a time, the free slots fill up to exactly the limit.
        for (var i = 0; i < 8; i++)
        {
            try
            {
                await orchestrator.GetServerAsync($"repo-{i}", Path.Combine(_context.Root, "workspaces", $"w{i}"));
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
            {
                Assert.Contains("already runs 3 agents", e.Status.Detail, StringComparison.Ordinal);
            }
        }

        Assert.Equal(3, (await orchestrator.Store.ListAsync(CancellationToken.None)).Count);
        Assert.Equal(3, TestAgents.LiveProcesses(_context.AgentsDirectory).Count);
    }

    private static string Workspace(IsolationStack stack, string name)
    {
        var path = Path.Combine(stack.Root, name);
        Directory.CreateDirectory(path);
        File.WriteAllText(Path.Combine(path, "WORKSPACE"), "");
        return path;
    }
}
