using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.V1;

namespace Rbs.Tests.Orchestrator.Isolation;

/// <summary>
/// Issue 10, defect 2: with several users on one machine (process backend), one user's build must not take over another
/// user's agent. Real processes under real distinct uids (the tests run as root, like CI), real bazel 4.2.3, real jbazel,
/// a real gateway.
/// </summary>
public sealed class UserIsolationTests(ITestOutputHelper output)
{
    private const string Bazel = "/usr/bin/bazel";

    [SkippableFact]
    public async Task BobsBuildCannotReadAlicesCredentialsTreeOrOutputsNorRegisterAsHerAgent()
    {
        Skip.IfNot(UnixProcesses.EffectiveUid() == 0, "needs root: the orchestrator gives each user a uid of their own");
        Skip.IfNot(File.Exists(Bazel), "bazel is not installed at /usr/bin/bazel");
        await using var stack = await IsolationStack.StartAsync(output, withGateway: true);

        // alice builds a secret through the gateway, like a laptop would.
        var alice = Workspace(stack, "alice-ws", """
            genrule(name = "secret", srcs = ["secret.txt"], outs = ["secret.out"], cmd = "cp $< $@")
            """);
        File.WriteAllText(Path.Combine(alice, "secret.txt"), "alice's secret\n");
        var first = await stack.JBazelAsync(alice, IsolationStack.AliceKey, "tunnel", "build", "//:secret");
        Assert.True(first.ExitCode == 0, first.Stderr);
        var aliceAgent = IsolationStack.AgentIdOf(first.Stderr);

        // What alice has on this machine, found as root: her synced tree, her build's output, her agent's credentials.
        var tree = Directory.EnumerateFiles(stack.StateDirectory, "secret.txt", SearchOption.AllDirectories)
            .Select(Path.GetDirectoryName).Single(d => d!.EndsWith("/tree", StringComparison.Ordinal))!;
        var outputFile = Path.Combine(new FileInfo(Path.Combine(tree, "bazel-bin")).LinkTarget!, "secret.out");
        Assert.Equal("alice's secret\n", File.ReadAllText(outputFile));
        var outputBase = outputFile[..outputFile.IndexOf("/execroot/", StringComparison.Ordinal)];
        // The join token file: in the user's own directory with isolation (in <state>/agents/ before); it may already be
        // gone (an agent that deletes it after reading it), so bob gets every place it may be at.
        string[] credentialFiles =
        [
            Path.Combine(stack.AgentsDirectory, aliceAgent + ".join"),
            Path.Combine(stack.WorkspacesDirectory, "alice", ".agents", aliceAgent + ".join"),
            Path.Combine(stack.WorkspacesDirectory, "alice", ".agents", aliceAgent + ".key"),
        ];
        output.WriteLine($"alice: agent {aliceAgent}, tree {tree}, output {outputFile}");

        // bob's genrule tries everything a hostile build on this machine would.
        var probe = string.Join('\n',
        [
            "try() { if \"$@\" >/dev/null 2>&1; then echo \"ALLOWED: $*\"; else echo \"refused: $*\"; fi; }",
            "echo \"uid=$(id -u)\"",
            .. credentialFiles.Select(f => $"try cat '{f}'"),
            $"try ls '{Path.GetDirectoryName(tree)}'",
            $"try cat '{Path.Combine(tree, "secret.txt")}'",
            $"try ls '{outputBase}'",
            $"try cat '{outputFile}'",
            // The impostor takes whichever of alice's join token files bob can read (none, if isolation works).
            $"join='{credentialFiles[1]}'; for f in '{credentialFiles[0]}' '{credentialFiles[1]}'; do [ -r \"$f\" ] && join=\"$f\" && break; done",
            $"d=$(mktemp -d); timeout 20 '{ReachableBinaries.Agent}' --agent-id {aliceAgent} --workspace \"$d\" " +
                $"--listen 127.0.0.1:0 --gateway {stack.GatewayAgentAddress} --join-token-file \"$join\" > \"$d/log\" 2>&1; " +
                "echo \"impostor exit $?: $(tr '\\n' ' ' < \"$d/log\" | head -c 600)\"",
            "",
        ]);
        var bob = Workspace(stack, "bob-ws", """
            genrule(name = "probe", srcs = ["probe.sh"], outs = ["probe.txt"], cmd = "bash $(location probe.sh) > $@ 2>&1")
            """);
        File.WriteAllText(Path.Combine(bob, "probe.sh"), probe);
        var bobs = await stack.JBazelAsync(bob, IsolationStack.BobKey, "tunnel", "build", "//:probe");
        Assert.True(bobs.ExitCode == 0, bobs.Stderr);
        var bobTree = Directory.EnumerateFiles(stack.StateDirectory, "probe.sh", SearchOption.AllDirectories)
            .Select(Path.GetDirectoryName).Single(d => d!.EndsWith("/tree", StringComparison.Ordinal))!;
        var report = File.ReadAllText(Path.Combine(new FileInfo(Path.Combine(bobTree, "bazel-bin")).LinkTarget!, "probe.txt"));
        output.WriteLine("bob's probe:\n" + report);

        // Nothing of alice's was open to bob's build, and the impostor got as far as her credentials and no further: it
        // never registered as her agent.
        Assert.DoesNotContain("ALLOWED", report, StringComparison.Ordinal);
        Assert.Equal(credentialFiles.Length + 4, report.Split('\n').Count(l => l.StartsWith("refused: ", StringComparison.Ordinal)));
        Assert.Matches(@"impostor exit [1-9][0-9]*: .*JoinTokenFile", report);

        // bob's build ran under his own uid, which is neither root nor alice's.
        var aliceUid = stack.UidOf("alice");
        var bobUid = stack.UidOf("bob");
        Assert.NotNull(aliceUid);
        Assert.NotNull(bobUid);
        Assert.NotEqual(aliceUid, bobUid);
        Assert.Contains($"uid={bobUid}\n", report, StringComparison.Ordinal);

        // alice's next build still reaches her own agent, warm.
        var second = await stack.JBazelAsync(alice, IsolationStack.AliceKey, "tunnel", "build", "//:secret");
        Assert.True(second.ExitCode == 0, second.Stderr);
        Assert.Equal(aliceAgent, IsolationStack.AgentIdOf(second.Stderr));
        Assert.Contains(" warm in ", second.Stderr, StringComparison.Ordinal);

        // Her agent's loopback port (direct mode) is open to every process on this machine: only her key opens it.
        var aliceDirect = await GetServerAsync(stack, IsolationStack.AliceKey, alice);
        var bobDirect = await GetServerAsync(stack, IsolationStack.BobKey, bob);
        Assert.Equal(aliceAgent, aliceDirect.AgentId);
        Assert.NotEmpty(aliceDirect.SessionToken);
        Assert.Equal(StatusCode.Unauthenticated, (await StatusAsync(aliceDirect.Address, null)).StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, (await StatusAsync(aliceDirect.Address, bobDirect.SessionToken)).StatusCode);
        Assert.Equal(StatusCode.OK, (await StatusAsync(aliceDirect.Address, aliceDirect.SessionToken)).StatusCode);
    }

    [SkippableFact]
    public async Task WithoutRootTheOrchestratorServesTheFirstUserOnlyAndTellsTheOthersWhy()
    {
        Skip.IfNot(UnixProcesses.EffectiveUid() == 0, "needs root to run the orchestrator as another, unprivileged uid");
        await using var stack = await IsolationStack.StartAsync(output, withGateway: false, buildTool: ReachableBinaries.FakeBazel, unprivileged: true);
        var alice = Workspace(stack, "alice-ws", "");
        var bob = Workspace(stack, "bob-ws", "");

        var aliceFirst = await stack.JBazelAsync(alice, IsolationStack.AliceKey, "direct", "exit", "0");
        Assert.True(aliceFirst.ExitCode == 0, aliceFirst.Stderr);

        // bob would run as the same uid as alice: refused, permanently (34), with the reason and the ways out.
        var bobs = await stack.JBazelAsync(bob, IsolationStack.BobKey, "direct", "exit", "0");
        Assert.Equal(34, bobs.ExitCode);
        Assert.Contains("FailedPrecondition", bobs.Stderr, StringComparison.Ordinal);
        Assert.Contains($"runs every agent as its own uid ({stack.OrchestratorUid}) because the orchestrator is not root", bobs.Stderr, StringComparison.Ordinal);
        Assert.Contains("already serves user 'alice'", bobs.Stderr, StringComparison.Ordinal);
        Assert.Contains("Run the orchestrator as root", bobs.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("rbs: agent ", bobs.Stderr, StringComparison.Ordinal);

        // alice stays served; a third user is refused like bob.
        var aliceAgain = await stack.JBazelAsync(alice, IsolationStack.AliceKey, "direct", "exit", "0");
        Assert.True(aliceAgain.ExitCode == 0, aliceAgain.Stderr);
        var carol = await stack.JBazelAsync(bob, IsolationStack.CarolKey, "direct", "exit", "0");
        Assert.Equal(34, carol.ExitCode);
    }

    private static string Workspace(IsolationStack stack, string name, string build)
    {
        var path = Path.Combine(stack.Root, name);
        Directory.CreateDirectory(path);
        File.WriteAllText(Path.Combine(path, "WORKSPACE"), $"workspace(name = \"{name.Replace('-', '_')}\")\n");
        File.WriteAllText(Path.Combine(path, "BUILD"), build + "\n");
        return path;
    }

    private static async Task<GetServerResponse> GetServerAsync(IsolationStack stack, string apiKey, string workspace)
    {
        using var channel = GrpcChannel.ForAddress(stack.OrchestratorAddress);
        var client = new V1.Orchestrator.OrchestratorClient(channel);
        return await client.GetServerAsync(
            new GetServerRequest { RepoHash = RepoHash(workspace), SourcePath = workspace, ConnectMode = ConnectMode.Direct },
            new Metadata { { "authorization", "Bearer " + apiKey } }).ResponseAsync.WaitAsync(IsolationStack.Timeout);
    }

    // jbazel's RepoHash: the same agent the builds above used.
    private static string RepoHash(string workspace) =>
        Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(
            System.Text.Encoding.UTF8.GetBytes("rbs-repo-hash/v1\n" + Environment.MachineName + "\n" + Path.GetFullPath(workspace))));

    private static async Task<Status> StatusAsync(string address, string? key)
    {
        using var channel = GrpcChannel.ForAddress(address);
        var client = new V1.Agent.AgentClient(channel);
        var headers = new Metadata();
        if (key is not null)
        {
            headers.Add("authorization", "Bearer " + key);
        }

        try
        {
            await client.GetStatusAsync(new GetStatusRequest(), headers).ResponseAsync.WaitAsync(IsolationStack.Timeout);
            return Status.DefaultSuccess;
        }
        catch (RpcException e)
        {
            return e.Status;
        }
    }
}
