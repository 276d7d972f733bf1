using System.Diagnostics;
using Rbs.Tests.JBazel;
using Rbs.Tests.Shared.Hosting;

namespace Rbs.Tests.Agent.Sync;

/// <summary>
/// Issue 10 defect 8, the agent's side: a full disk during a workspace sync was status Internal ("permanent") with a
/// hint about "an unfinished change". Real disk: a 2 MiB tmpfs mounted as the orchestrator's workspaces path, so the
/// agent's synced tree and sync state live on it; real orchestrator, agent and jbazel.
/// </summary>
public sealed class DiskFullTests(ITestOutputHelper output)
{
    [SkippableFact]
    public async Task AFullAgentDiskSaysSoWithTheNextStepAndExits34()
    {
        var mount = Directory.CreateTempSubdirectory("rbs-full-disk-").FullName;
        var (mounted, why) = await RunAsync("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "rbs-test-full-disk", mount);
        Skip.IfNot(mounted, $"cannot mount a tmpfs here (needs root): {why}");
        try
        {
            using var workspace = new TempWorkspace();
            // 4 MiB of content cannot fit a 2 MiB disk.
            var data = new byte[4 * 1024 * 1024];
            new Random(7).NextBytes(data);
            await File.WriteAllBytesAsync(Path.Combine(workspace.Root, "big.bin"), data);

            await using (var stack = await LocalStack.StartAsync(output, withGateway: false, orchestratorArgs: ["--workspaces-path", mount]))
            {
                await using var jbazel = JBazelProcess.Start(output, workspace.Root, workspace.Home, new Dictionary<string, string?>(),
                    [$"--rbs_orchestrator={stack.OrchestratorAddress}", "--rbs_connect=direct", "--rbs_sync", "exit", "0"]);
                jbazel.StandardInput.Close();

                Assert.Equal(34, await jbazel.WaitForExitAsync(LocalStack.Timeout));
                var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
                Assert.Contains("(ResourceExhausted): the agent's disk is full: ", line, StringComparison.Ordinal);
                Assert.Contains($"(workspace {mount}/", line, StringComparison.Ordinal);
                Assert.Contains("The agent's workspace is unchanged. Free space on the agent's disk", line, StringComparison.Ordinal);
                Assert.EndsWith("then run the command again.", line, StringComparison.Ordinal);
                Assert.DoesNotContain("unfinished change", line, StringComparison.Ordinal);
                Assert.DoesNotContain("Internal", line, StringComparison.Ordinal);
            }
        }
        finally
        {
            // The agents are gone (the stack killed them), so nothing holds the mount.
            var (unmounted, error) = await RunAsync("umount", mount);
            if (!unmounted)
            {
                output.WriteLine($"umount {mount}: {error}; lazy unmount");
                await RunAsync("umount", "-l", mount);
            }

            Directory.Delete(mount, recursive: true);
        }
    }

    private static async Task<(bool Ok, string Error)> RunAsync(string command, params string[] args)
    {
        var info = new ProcessStartInfo(command) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        try
        {
            using var process = Process.Start(info)!;
            var error = await process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            return (process.ExitCode == 0, error.Trim());
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (false, e.Message);
        }
    }
}
