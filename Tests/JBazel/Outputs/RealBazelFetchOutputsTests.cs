using System.Diagnostics;
using Rbs.Shared.Hosting;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.JBazel.Outputs;

/// <summary>
/// End to end on one machine: the real jbazel, a real rbs-orchestrator in local mode, the rbs-agent it spawns, and the
/// real bazel 4.2.3 building genrules; <c>--rbs_fetch_outputs</c> lands the outputs in jbazel-out/.
/// </summary>
public sealed class RealBazelFetchOutputsTests(ITestOutputHelper output) : IDisposable
{
    private const string Bazel = "/usr/bin/bazel";
    private static readonly TimeSpan s_buildTimeout = TimeSpan.FromSeconds(180);

    private readonly TempWorkspace _workspace = new("WORKSPACE");

    public void Dispose() => _workspace.Dispose();

    [SkippableFact]
    public async Task JBazelFetchOutputsBuildLandsTheGenruleOutputsInJBazelOut()
    {
        Skip.IfNot(File.Exists(Bazel), "bazel is not installed at /usr/bin/bazel");
        File.WriteAllText(Path.Combine(_workspace.Root, "WORKSPACE"), "workspace(name = \"outputs_e2e\")\n");
        // bazel would otherwise look into the fetched outputs as if they were packages.
        File.WriteAllText(Path.Combine(_workspace.Root, ".bazelignore"), "jbazel-out\n");
        var app = _workspace.CreateDirectory("app");
        File.WriteAllText(Path.Combine(app, "greeting.in"), "hello outputs\n");
        File.WriteAllText(Path.Combine(app, "BUILD"), """
            genrule(name = "greeting", srcs = ["greeting.in"], outs = ["greeting.txt"], cmd = "tr 'a-z' 'A-Z' < $< > $@")
            genrule(name = "count", srcs = [":greeting"], outs = ["count.txt"], cmd = "wc -c < $< > $@")
            """);
        var state = Directory.CreateDirectory(Path.Combine(_workspace.Base, "state")).FullName;
        var outputUserRoot = Path.Combine(_workspace.Base, "bazel-root");
        var readyFile = Path.Combine(state, "ready.json");

        using var orchestrator = Process.Start(new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-orchestrator"))
        {
            ArgumentList = { "--local-mode", "--port", "0", "--state-path", Path.Combine(state, "orchestrator.db"), "--ready-file", readyFile },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        })!;
        orchestrator.OutputDataReceived += (_, e) => TestLog.Write(output, $"orchestrator: {e.Data}");
        orchestrator.ErrorDataReceived += (_, e) => TestLog.Write(output, $"orchestrator: {e.Data}");
        orchestrator.BeginOutputReadLine();
        orchestrator.BeginErrorReadLine();
        try
        {
            var address = await WaitForAddressAsync(readyFile).WaitAsync(TimeSpan.FromSeconds(30));
            var env = new Dictionary<string, string?> { ["RBS_ORCHESTRATOR"] = address };
            string[] build = ["--rbs_fetch_outputs", "--rbs_status=always", $"--output_user_root={outputUserRoot}", "build", "//app:all"];
            var greeting = Path.Combine(_workspace.Root, "jbazel-out", "k8-fastbuild", "bin", "app", "greeting.txt");
            var count = Path.Combine(_workspace.Root, "jbazel-out", "k8-fastbuild", "bin", "app", "count.txt");

            var first = await RunAsync(env, build);
            Assert.Matches(@"(?m)^rbs: outputs: 2 files in jbazel-out/ \(2 changed, 17 B fetched\) in \d+ ms$", first);
            Assert.Equal("HELLO OUTPUTS\n", File.ReadAllText(greeting));
            Assert.Equal("14", File.ReadAllText(count).Trim());

            var unchanged = await RunAsync(env, build);
            Assert.Contains("rbs: outputs: 2 files in jbazel-out/ (0 changed, 0 B fetched)", unchanged, StringComparison.Ordinal);

            File.WriteAllText(Path.Combine(app, "greeting.in"), "an uncommitted edit\n");
            var edited = await RunAsync(env, build);
            Assert.Contains("rbs: outputs: 2 files in jbazel-out/ (2 changed,", edited, StringComparison.Ordinal);
            Assert.Equal("AN UNCOMMITTED EDIT\n", File.ReadAllText(greeting));
            Assert.Equal("20", File.ReadAllText(count).Trim());
        }
        finally
        {
            // The agent outlives the orchestrator on purpose (warm agents): stop both, then bazel's server.
            if (!orchestrator.HasExited)
            {
                orchestrator.Kill(entireProcessTree: true);
                await orchestrator.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }

            using var shutdown = Process.Start(new ProcessStartInfo(Bazel)
            {
                ArgumentList = { $"--output_user_root={outputUserRoot}", "shutdown" },
                WorkingDirectory = _workspace.Root,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            })!;
            await shutdown.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        }
    }

    private async Task<string> RunAsync(Dictionary<string, string?> env, string[] args)
    {
        await using var jbazel = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, env, args);
        jbazel.StandardInput.Close();
        Assert.Equal(0, await jbazel.WaitForExitAsync(s_buildTimeout));
        return jbazel.StderrText;
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
