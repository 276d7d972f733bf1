namespace Rbs.Tests.Agent;

/// <summary>TestTools/fake-bazel.sh: the build tool the test agents run (modes: see the script).</summary>
internal static class FakeBazel
{
    private static readonly Lazy<string> s_path = new(() =>
    {
        var path = System.IO.Path.Combine(AppContext.BaseDirectory, "Agent", "TestTools", "fake-bazel.sh");
        if (!File.Exists(path))
        {
            throw new FileNotFoundException("fake-bazel.sh was not copied to the test output", path);
        }

        // The build copies the file; make sure it is executable whatever the copy did to its mode.
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(path, File.GetUnixFileMode(path) | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        return path;
    });

    public static string Path => s_path.Value;
}
