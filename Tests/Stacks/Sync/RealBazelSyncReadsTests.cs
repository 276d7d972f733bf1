using System.Collections.Concurrent;
using System.Diagnostics;
using Rbs.Shared.Hosting;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;

namespace Rbs.Tests.Stacks.Sync;

/// <summary>
/// Real bazel 4.2.3, the real jbazel, a real rbs-orchestrator in local mode and the rbs-agent it spawns with its own
/// synced copy of the workspace (<c>--rbs_sync</c>, the path every agent that does not share the laptop's filesystem
/// takes). Each case runs local bazel on the laptop's tree and jbazel on the same tree, and compares what bazel built.
/// The agent's own HOME has a ~/.bazelrc that must never apply.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class RealBazelSyncReadsTests(RealBazelSyncReadsTests.Stack stack, ITestOutputHelper output) : IClassFixture<RealBazelSyncReadsTests.Stack>
{
    private const string Bazel = "/usr/bin/bazel";
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(300);

    [SkippableFact]
    public async Task AGitIgnoredUserBazelrcTheWorkspaceRcTryImportsChangesTheBuildTheSameLocallyAndThroughTheSyncedAgent()
    {
        stack.SkipUnlessReady();
        var local = await stack.LocalDefinesAsync(output, []);
        Assert.Equal("greeting=user_rc home=none laptop=none", local);

        // Default: git-ignored files are synced. --rbs_sync_gitignore: they are not, but an rc file's import still is.
        Assert.Equal(local, await stack.JBazelDefinesAsync(output, []));
        Assert.Equal(local, await stack.JBazelDefinesAsync(output, ["--rbs_sync_gitignore"]));
    }

    [SkippableFact]
    public async Task TheLaptopsHomeRcAndBazelrcFilesApplyOnTheAgentAndTheAgentsOwnHomeRcNever()
    {
        stack.SkipUnlessReady();
        File.WriteAllText(Path.Combine(stack.LaptopHome, ".bazelrc"), "build --define=home=laptop_home\n");
        try
        {
            var local = await stack.LocalDefinesAsync(output, []);
            Assert.Equal("greeting=user_rc home=laptop_home laptop=none", local);
            Assert.Equal(local, await stack.JBazelDefinesAsync(output, []));

            // --bazelrc=<laptop path>: a path outside the workspace, given relative to the laptop's directory.
            string[] laptopRc = ["--bazelrc=../laptop.bazelrc"];
            local = await stack.LocalDefinesAsync(output, laptopRc);
            Assert.Equal("greeting=user_rc home=laptop_home laptop=laptop_file", local);
            Assert.Equal(local, await stack.JBazelDefinesAsync(output, laptopRc));

            // --noworkspace_rc: the workspace .bazelrc (and what it imports) is not read, here or there.
            string[] noWorkspaceRc = ["--noworkspace_rc", $"--bazelrc={Path.Combine(stack.Base, "all.bazelrc")}"];
            local = await stack.LocalDefinesAsync(output, noWorkspaceRc);
            Assert.Equal("greeting=all_file home=laptop_home laptop=all_file", local);
            Assert.Equal(local, await stack.JBazelDefinesAsync(output, noWorkspaceRc));

            // --nohome_rc: neither this machine's nor the agent's.
            string[] noHomeRc = ["--nohome_rc"];
            local = await stack.LocalDefinesAsync(output, noHomeRc);
            Assert.Equal("greeting=user_rc home=none laptop=none", local);
            Assert.Equal(local, await stack.JBazelDefinesAsync(output, noHomeRc));
        }
        finally
        {
            File.Delete(Path.Combine(stack.LaptopHome, ".bazelrc"));
        }
    }

    [SkippableFact]
    public async Task AFailingShTestIsExit3AndItsLogComesBackUnderJbazelOutTestlogsAsTheAgentsBazelWroteIt()
    {
        stack.SkipUnlessReady();
        var testlogs = Path.Combine(stack.Workspace, "jbazel-out", "testlogs");
        if (Directory.Exists(testlogs))
        {
            Directory.Delete(testlogs, recursive: true);
        }

        var (code, stdout, stderr) = await stack.JBazelAsync(output, ["test", "//app:all"]);
        Assert.Equal(3, code);

        // One rbs: line, after all of bazel's output, naming the directory; bazel's own lines are there unchanged.
        var lines = stderr.TrimEnd('\n').Split('\n');
        Assert.Equal($"rbs: logs of 1 test that did not pass (//app:fail_test) are in {stack.WorkspaceRealPath}/jbazel-out/testlogs/", lines[^1]);
        Assert.Single(lines, line => line.StartsWith("rbs: ", StringComparison.Ordinal));
        Assert.DoesNotContain("rbs:", stdout, StringComparison.Ordinal);
        Assert.Matches(@"//app:fail_test\s+FAILED", stdout + stderr);
        // bazel's stderr is local bazel's: the agent finds the logs without a BEP file, whose "INFO: Build Event
        // Protocol files produced successfully." local bazel would not print.
        Assert.DoesNotContain("Build Event Protocol", stderr, StringComparison.Ordinal);

        // The very bytes the agent's bazel wrote (its bazel-testlogs in its copy of the workspace).
        var agentLogs = Path.Combine(stack.AgentTree(), "bazel-testlogs", "app", "fail_test");
        foreach (var name in new[] { "test.log", "test.xml" })
        {
            var fetched = await File.ReadAllBytesAsync(Path.Combine(testlogs, "app", "fail_test", name));
            Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(agentLogs, name)), fetched);
        }

        Assert.Contains("failing on purpose", File.ReadAllText(Path.Combine(testlogs, "app", "fail_test", "test.log")), StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(testlogs, "app", "pass_test")), "a passing test's log is not fetched");

        // Turned off: bazel's exit code and output only.
        (code, _, stderr) = await stack.JBazelAsync(output, ["--rbs_fetch_test_logs=false", "test", "//app:fail_test"]);
        Assert.Equal(3, code);
        Assert.DoesNotContain("rbs: logs of", stderr, StringComparison.Ordinal);
    }

    /// <summary>The shared stack: one orchestrator, one workspace, one local and one agent bazel server for all cases.</summary>
    public sealed class Stack : IAsyncLifetime
    {
        private readonly ConcurrentQueue<string> _logs = new();
        private Process? _orchestrator;
        private string? _address;
        private string? _skipReason;

        public string Base { get; } = Directory.CreateTempSubdirectory("rbs-bazel-reads-").FullName;

        public string Workspace => Path.Combine(Base, "ws");

        public string WorkspaceRealPath => Rbs.JBazel.Workspace.RepoHash.RealPath(Workspace);

        public string LaptopHome => Path.Combine(Base, "laptop-home");

        private string AgentHome => Path.Combine(Base, "agent-home");

        private string OutputUserRoot => Path.Combine(Base, "bazel-root");

        private string Synced => Path.Combine(Base, "synced");

        public void SkipUnlessReady() => Skip.If(_skipReason is not null, _skipReason);

        public async Task InitializeAsync()
        {
            var kit = OfflineRules();
            if (!File.Exists(Bazel) || kit is null)
            {
                _skipReason = kit is null ? "e2e/offline_rules not found above the test binaries" : "bazel is not installed at /usr/bin/bazel";
                return;
            }

            CreateWorkspace(kit);
            var state = Directory.CreateDirectory(Path.Combine(Base, "state")).FullName;
            var readyFile = Path.Combine(state, "ready.json");
            var start = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-orchestrator"))
            {
                ArgumentList = { "--local-mode", "--port", "0", "--state-path", Path.Combine(state, "orchestrator.db"), "--ready-file", readyFile, "--workspaces-path", Synced },
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            // The agent machine's own ~/.bazelrc: bazel on the agent must never read it for a synced client.
            start.Environment["HOME"] = AgentHome;
            _orchestrator = Process.Start(start)!;
            _orchestrator.OutputDataReceived += (_, e) => _logs.Enqueue($"orchestrator: {e.Data}");
            _orchestrator.ErrorDataReceived += (_, e) => _logs.Enqueue($"orchestrator: {e.Data}");
            _orchestrator.BeginOutputReadLine();
            _orchestrator.BeginErrorReadLine();
            _address = await WaitForAddressAsync(readyFile).WaitAsync(TimeSpan.FromSeconds(60));
        }

        public async Task DisposeAsync()
        {
            if (_orchestrator is { HasExited: false })
            {
                // The agent outlives the orchestrator on purpose (warm agents): the tree kill takes it too.
                _orchestrator.Kill(entireProcessTree: true);
                await _orchestrator.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }

            foreach (var tree in AgentTrees().Append(Workspace))
            {
                {
                    await RunAsync(null, Bazel, tree, LaptopHome, [$"--output_user_root={OutputUserRoot}", "shutdown"]);
                }
            }

            try
            {
                Directory.Delete(Base, recursive: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // bazel's output tree has read-only directories; the temp directory is left for the OS.
            }
        }

        /// <summary>The agent's copy of the workspace.</summary>
        public string AgentTree() => Assert.Single(AgentTrees());

        // <synced>/<user>/<repo hash>/tree; never into a tree (its bazel-* symlinks lead into bazel's output base).
        private IEnumerable<string> AgentTrees() => Directory.Exists(Synced)
            ? Directory.EnumerateDirectories(Synced, "tree", new EnumerationOptions { RecurseSubdirectories = true, MaxRecursionDepth = 2, AttributesToSkip = FileAttributes.ReparsePoint })
                .Where(tree => File.Exists(Path.Combine(tree, "WORKSPACE")))
            : [];

        /// <summary>Local bazel on the laptop's tree: what //:defines wrote.</summary>
        public async Task<string> LocalDefinesAsync(ITestOutputHelper output, string[] startupOptions)
        {
            var (code, _, stderr) = await RunAsync(output, Bazel, Workspace, LaptopHome, [.. startupOptions, $"--output_user_root={OutputUserRoot}", "build", "//:defines"]);
            Assert.True(code == 0, $"local bazel failed ({code}): {stderr}");
            return File.ReadAllText(Path.Combine(Workspace, "bazel-bin", "defines.txt")).Trim();
        }

        /// <summary>jbazel through the synced agent: what //:defines wrote there, fetched back.</summary>
        public async Task<string> JBazelDefinesAsync(ITestOutputHelper output, string[] options)
        {
            var (code, _, stderr) = await JBazelAsync(output, ["--rbs_fetch_outputs", .. options, "build", "//:defines"]);
            Assert.True(code == 0, $"jbazel failed ({code}): {stderr}");
            return File.ReadAllText(Path.Combine(Workspace, "jbazel-out", "k8-fastbuild", "bin", "defines.txt")).Trim();
        }

        /// <summary>jbazel --rbs_sync with the laptop's HOME, jbazel options and startup options first.</summary>
        public async Task<(int Code, string Stdout, string Stderr)> JBazelAsync(ITestOutputHelper output, string[] args)
        {
            var rbs = args.TakeWhile(arg => arg.StartsWith("--rbs_", StringComparison.Ordinal)).ToArray();
            var startup = args.Skip(rbs.Length).TakeWhile(arg => arg.StartsWith("--", StringComparison.Ordinal)).ToArray();
            var rest = args.Skip(rbs.Length + startup.Length);
            string[] full = ["--rbs_sync", .. rbs, .. startup, $"--output_user_root={OutputUserRoot}", .. rest];
            await using var jbazel = JBazelProcess.Start(
                output,
                Workspace,
                LaptopHome,
                new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = _address, ["XDG_CACHE_HOME"] = Path.Combine(Base, "xdg-cache") },
                full);
            jbazel.StandardInput.Close();
            int code;
            try
            {
                code = await jbazel.WaitForExitAsync(s_timeout);
            }
            finally
            {
                while (_logs.TryDequeue(out var line))
                {
                    TestLog.Write(output, line);
                }
            }

            TestLog.Write(output, $"jbazel exit {code}; stderr:\n{jbazel.StderrText}");
            return (code, jbazel.StdoutText, jbazel.StderrText);
        }

        private void CreateWorkspace(string kit)
        {
            Directory.CreateDirectory(Workspace);
            Directory.CreateDirectory(LaptopHome);
            Directory.CreateDirectory(AgentHome);
            foreach (var repository in new[] { "rules_cc", "rules_java", "remote_coverage_tools" })
            {
                Copy(Path.Combine(kit, repository), Path.Combine(Workspace, "third_party", repository));
            }

            Write("WORKSPACE", """
                workspace(name = "reads")
                local_repository(name = "rules_cc", path = "third_party/rules_cc")
                local_repository(name = "rules_java", path = "third_party/rules_java")
                local_repository(name = "remote_coverage_tools", path = "third_party/remote_coverage_tools")

                """);
            Write(".bazelignore", "third_party\njbazel-out\n");
            Write(".gitignore", "user.bazelrc\n");
            Write(".bazelrc", "build --define=greeting=workspace_rc --define=home=none --define=laptop=none\ntry-import %workspace%/user.bazelrc\n");
            Write("user.bazelrc", "build --define=greeting=user_rc\n");
            Write("BUILD", "genrule(name = \"defines\", outs = [\"defines.txt\"], cmd = \"echo greeting=$(greeting) home=$(home) laptop=$(laptop) > $@\")\n");
            Write("app/BUILD", "sh_test(name = \"fail_test\", srcs = [\"fail.sh\"])\nsh_test(name = \"pass_test\", srcs = [\"pass.sh\"])\n");
            Write("app/fail.sh", "#!/bin/sh\necho \"failing on purpose\"\nexit 1\n", executable: true);
            Write("app/pass.sh", "#!/bin/sh\necho ok\n", executable: true);
            File.WriteAllText(Path.Combine(Base, "laptop.bazelrc"), "build --define=laptop=laptop_file\n");
            File.WriteAllText(Path.Combine(Base, "all.bazelrc"), "build --define=greeting=all_file --define=laptop=all_file\n");
            File.WriteAllText(Path.Combine(AgentHome, ".bazelrc"), "build --define=home=AGENT_HOME_RC_LEAKED --define=greeting=AGENT_HOME_RC_LEAKED\n");
        }

        private void Write(string relative, string content, bool executable = false)
        {
            var path = Path.Combine(Workspace, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllText(path, content);
            if (executable)
            {
                File.SetUnixFileMode(path, (UnixFileMode)0b111_101_101);
            }
        }

        private static void Copy(string from, string to)
        {
            Directory.CreateDirectory(to);
            foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
            {
                var target = Path.Combine(to, Path.GetRelativePath(from, file));
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                File.Copy(file, target);
                File.SetUnixFileMode(target, File.GetUnixFileMode(file));
            }
        }

        private static string? OfflineRules()
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                var kit = Path.Combine(dir.FullName, "e2e", "offline_rules");
                if (Directory.Exists(kit))
                {
                    return kit;
                }
            }

            return null;
        }

        private async Task<(int Code, string Stdout, string Stderr)> RunAsync(ITestOutputHelper? output, string file, string directory, string home, string[] args)
        {
            var start = new ProcessStartInfo(file) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
            foreach (var arg in args)
            {
                start.ArgumentList.Add(arg);
            }

            start.Environment["HOME"] = home;
            using var process = Process.Start(start)!;
            process.StandardInput.Close();
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(s_timeout);
            if (output is not null)
            {
                TestLog.Write(output, $"$ (cd {directory} && {file} {string.Join(' ', args)}) -> {process.ExitCode}\n{await stderr}");
            }

            return (process.ExitCode, await stdout, await stderr);
        }

        private static async Task<string> WaitForAddressAsync(string readyFile)
        {
            while (true)
            {
                if (await ReadyFile.TryReadAsync<OrchestratorReadyFile>(readyFile, CancellationToken.None) is { } ready)
                {
                    return ready.Address;
                }

                await Task.Delay(100);
            }
        }
    }
}
