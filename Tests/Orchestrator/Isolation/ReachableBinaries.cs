// Linux only: file modes.
#pragma warning disable CA1416

namespace Rbs.Tests.Orchestrator.Isolation;

/// <summary>
/// The test output as agents under other uids can run it. Isolated agents (several users, root) run under their users'
/// uids, so rbs-agent and the fake build tool must sit below directories every uid may traverse: the test output itself
/// when it does, else a copy in /tmp made once per test run (a checkout below /root, mode 0700, does not qualify).
/// RBS_TEST_COPY_BINARIES=1 forces the copy (to test this path from a checkout that does not need it).
/// </summary>
internal static class ReachableBinaries
{
    private static readonly Lazy<string> s_directory = new(Create);

    public static string Directory => s_directory.Value;

    public static string Agent => Path.Combine(Directory, "rbs-agent");

    public static string FakeBazel => Path.Combine(Directory, "Agent", "TestTools", "fake-bazel.sh");

    private static string Create()
    {
        _ = Rbs.Tests.Agent.FakeBazel.Path; // makes the original executable for everyone
        var baseDirectory = Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory);
        if (OpenToEveryone(baseDirectory) && Environment.GetEnvironmentVariable("RBS_TEST_COPY_BINARIES") != "1")
        {
            return baseDirectory;
        }

        // One place per checkout, made afresh by each run: a run whose exit handler did not get to delete it leaves one
        // copy behind, never one per run.
        var key = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(baseDirectory)))[..16];
        var copy = Path.Combine(Path.GetTempPath(), "rbs-test-binaries-" + key);
        if (System.IO.Directory.Exists(copy))
        {
            System.IO.Directory.Delete(copy, recursive: true);
        }

        System.IO.Directory.CreateDirectory(copy);
        File.SetUnixFileMode(copy, (UnixFileMode)0b111_101_101);
        foreach (var source in System.IO.Directory.EnumerateFiles(baseDirectory, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(copy, Path.GetRelativePath(baseDirectory, source));
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(source, target);
            File.SetUnixFileMode(target, File.GetUnixFileMode(source) | UnixFileMode.OtherRead | UnixFileMode.GroupRead);
        }

        foreach (var directory in System.IO.Directory.EnumerateDirectories(copy, "*", SearchOption.AllDirectories))
        {
            File.SetUnixFileMode(directory, (UnixFileMode)0b111_101_101);
        }

        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                System.IO.Directory.Delete(copy, recursive: true);
            }
            catch (IOException)
            {
            }
        };
        return copy;
    }

    private static bool OpenToEveryone(string directory)
    {
        for (var current = directory; !string.IsNullOrEmpty(current); current = Path.GetDirectoryName(current))
        {
            if ((File.GetUnixFileMode(current) & UnixFileMode.OtherExecute) == 0)
            {
                return false;
            }
        }

        return true;
    }
}
